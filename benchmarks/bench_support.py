"""What transformer_bench.py and memory_bench.py share: the shape options, the --smoke shape, the random
LTXVideoTransformer3DModel and the inputs of one forward as LTXPipeline makes them.

The scripts run as `python3 benchmarks/<name>.py`, which puts benchmarks/ first on sys.path, so they import this
module by its bare name.
"""

import torch
from diffusers import LTXVideoTransformer3DModel


def add_shape_arguments(parser, layers, heads, head_dim):
    """The model and input shape options; the model size is the script's, the rest is LTX-Video's 768x512x121."""
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--heads", type=int, default=heads)
    parser.add_argument("--head-dim", type=int, default=head_dim)
    parser.add_argument("--caption-channels", type=int, default=4096)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--latent-frames", type=int, default=16)
    parser.add_argument("--latent-height", type=int, default=16)
    parser.add_argument("--latent-width", type=int, default=24)
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)


def apply_smoke_shape(args):
    """The tiny --smoke shape and run count (a check, not a benchmark); the device is left to the script."""
    args.layers, args.heads, args.head_dim, args.caption_channels, args.channels = 2, 2, 8, 16, 4
    args.latent_frames, args.latent_height, args.latent_width, args.text_len = 2, 4, 4, 8
    args.warmup, args.iters = 1, 2


def build_transformer(args, device, dtype):
    """A transformer of the shape options with diffusers' random init from seed 0, made on `device` in `dtype`."""
    dim = args.heads * args.head_dim
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise the weights directly in the benchmark dtype
    with device:
        model = LTXVideoTransformer3DModel(
            in_channels=args.channels, out_channels=args.channels, num_attention_heads=args.heads,
            attention_head_dim=args.head_dim, cross_attention_dim=dim, num_layers=args.layers,
            caption_channels=args.caption_channels,
        ).eval()
    torch.set_default_dtype(default_dtype)
    return model


def transformer_inputs(args, device, dtype):
    """The forward's keyword arguments: per-sample timestep 500, every text token attended, RoPE scale (8/25, 32, 32)
    (8x temporal, 32x spatial compression at 25 fps). Random from the global generator: the caller seeds it."""
    F, H, W = args.latent_frames, args.latent_height, args.latent_width
    S, L, B = F * H * W, args.text_len, args.batch
    return dict(
        hidden_states=torch.randn(B, S, args.channels, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(B, L, args.caption_channels, device=device, dtype=dtype),
        timestep=torch.full((B,), 500.0, device=device),
        encoder_attention_mask=torch.ones(B, L, device=device, dtype=torch.int64),
        num_frames=F, height=H, width=W, rope_interpolation_scale=(8 / 25, 32.0, 32.0), return_dict=False,
    )
