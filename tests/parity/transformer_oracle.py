#!/usr/bin/env python3
"""Oracle for the C++ LTXVideoTransformer3DModel: diffusers' model at small random configs.

Writes under OUT/transformer/:
  <model>/config.json + diffusion_pytorch_model*.safetensors   (model.save_pretrained)
  <case>/inputs.safetensors      forward arguments by diffusers' names (rope_interpolation_scale as f64 [3])
  <case>/reference.safetensors   `sample`, the diffusers output (float32)
  cases.json                     per case: model folder, variant, dtype, attention kernel, scalar args,
                                 and the error bound the C++ test applies

Only the test oracle uses Python; the C++ side never does.
"""

import argparse
import json
import os

import torch
from diffusers import LTXVideoTransformer3DModel
from safetensors.torch import save_file

# fp32: max|C++ - diffusers| <= 1e-4 * max(1, max|reference|) (issue: 1e-4 relative to the output's scale).
FP32_BOUND = 1e-4
# bf16: both sides run the same LibTorch kernels in bfloat16 on the same inputs and weights, but any
# difference in op fusion or evaluation order of an intermediate is amplified by bf16's unit roundoff
# 2^-8 ~ 3.9e-3 through the residual stream of every layer. Four bf16 ulps of the output scale (1.6e-2) is
# far below a real bug (a wrong norm, mask or RoPE convention moves the output by O(scale)).
BF16_BOUND = 1.6e-2
# fp16: the same argument with fp16's unit roundoff 2^-11 ~ 4.9e-4: four ulps of the output scale.
FP16_BOUND = 2e-3

# diffusers' own unit-test config (tests/models/transformers/test_models_transformer_ltx.py): D = 16, RoPE pad 4.
UNIT_CONFIG = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
    num_layers=1, qk_norm="rms_norm_across_heads", caption_channels=16,
)
# D = 24 (divisible by 6: no RoPE pad), 3 layers; saved sharded.
D24_CONFIG = dict(
    in_channels=8, out_channels=8, num_attention_heads=3, attention_head_dim=8, cross_attention_dim=24,
    num_layers=3, caption_channels=32,
)
# 32 heads (as every released model) so that the Lightricks single-file loader can infer the config; D = 32.
LIGHTRICKS_CONFIG = dict(
    in_channels=4, out_channels=4, num_attention_heads=32, attention_head_dim=1, cross_attention_dim=32,
    num_layers=2, caption_channels=8,
)
# The rarer config fields: affine block norms, bias-free attention, exact GELU, patch sizes 2 (RoPE
# scale), out_channels=None (-> in_channels). D = 20 (pad 2).
FIELDS_CONFIG = dict(
    in_channels=6, out_channels=None, patch_size=2, patch_size_t=2, num_attention_heads=2, attention_head_dim=10,
    cross_attention_dim=20, num_layers=2, activation_fn="gelu", norm_elementwise_affine=True, norm_eps=1e-5,
    caption_channels=12, attention_bias=False, attention_out_bias=False,
)


def build(config, seed):
    torch.manual_seed(seed)
    model = LTXVideoTransformer3DModel(**config).eval()
    # RMSNorm weights start at ones: perturb them so the test sees whether they are applied.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "transformer")
    os.makedirs(root, exist_ok=True)
    torch.set_grad_enabled(False)
    cases = []

    def run_case(name, model_dir, model, inputs, scalars, dtype="fp32", kernel="sdpa", bound=FP32_BOUND,
                 variant=None, reference_from=None, model_format="diffusers"):
        case_dir = os.path.join(root, name)
        os.makedirs(case_dir, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        kwargs = dict(inputs)
        if "rope_interpolation_scale" in inputs:
            # diffusers pipelines pass python floats; C++ gets them as float64 and uses them as double scalars.
            scale = inputs["rope_interpolation_scale"]
            kwargs["rope_interpolation_scale"] = tuple(float(s) for s in scale)
            tensors["rope_interpolation_scale"] = torch.tensor(scale, dtype=torch.float64)
        save_file(tensors, os.path.join(case_dir, "inputs.safetensors"))
        if reference_from is None:
            sample = model(**kwargs, **scalars, return_dict=False)[0]
            save_file({"sample": sample.float().contiguous()}, os.path.join(case_dir, "reference.safetensors"))
            reference = os.path.join(name, "reference.safetensors")
        else:
            reference = os.path.join(reference_from, "reference.safetensors")
        cases.append(dict(name=name, model=model_dir, format=model_format, variant=variant, dtype=dtype, kernel=kernel, bound=bound,
                          inputs=os.path.join(name, "inputs.safetensors"), reference=reference, args=scalars))

    # (1) diffusers' unit-test config and inputs (tests/models/transformers/test_models_transformer_ltx.py):
    #     integer RoPE grid, no scale.
    unit = build(UNIT_CONFIG, 0)
    unit.save_pretrained(os.path.join(root, "unit_model"))
    g = torch.Generator("cpu").manual_seed(0)
    run_case("unit", "unit_model", unit, dict(
        hidden_states=torch.randn((2, 2 * 16 * 16, 4), generator=g),
        encoder_hidden_states=torch.randn((2, 16, 16), generator=g),
        timestep=torch.randint(0, 1000, size=(2,), generator=g),
        encoder_attention_mask=torch.ones((2, 16)).bool(),
    ), dict(num_frames=2, height=16, width=16))

    # (2)-(5), (7): D = 24, three layers, sharded checkpoint.
    d24 = build(D24_CONFIG, 1)
    d24.save_pretrained(os.path.join(root, "d24_model"), max_shard_size="20KB")
    F, H, W, L, B = 3, 4, 6, 10, 2
    S = F * H * W
    g = torch.Generator("cpu").manual_seed(1)
    base = dict(
        hidden_states=torch.randn((B, S, 8), generator=g),
        encoder_hidden_states=torch.randn((B, L, 32), generator=g),
        timestep=torch.rand((B,), generator=g) * 1000,
        encoder_attention_mask=torch.ones((B, L), dtype=torch.int64),
        rope_interpolation_scale=[8 / 25, 32.0, 32.0],
    )
    grid = dict(num_frames=F, height=H, width=W)
    run_case("d24_rope_scale", "d24_model", d24, base, grid)
    # (3) padded text mask: sample 0 keeps 7 tokens, sample 1 keeps 3.
    mask = torch.zeros((B, L), dtype=torch.int64)
    mask[0, :7] = 1
    mask[1, :3] = 1
    run_case("d24_text_mask", "d24_model", d24, dict(base, encoder_attention_mask=mask), grid)
    # (4) per-token timesteps [B, S] (I2V / condition pipelines), timestep [B, 1].
    per_token = torch.rand((B, S), generator=g) * 1000
    per_token[:, : H * W] = 0.0  # a clean first frame, as I2V does
    run_case("d24_per_token_timestep", "d24_model", d24, dict(base, timestep=per_token, encoder_attention_mask=mask),
             grid)
    run_case("d24_timestep_b1", "d24_model", d24, dict(base, timestep=base["timestep"][:, None]), grid)
    # (5) explicit video_coords [B, 3, S] as LTXConditionPipeline builds them (pixel units, causal frame offset,
    # divided by the frame rate), different per sample; no num_frames/height/width.
    f, h, w = torch.meshgrid(torch.arange(F), torch.arange(H), torch.arange(W), indexing="ij")
    coords = torch.stack([(8 * f + 1 - 8).clamp(min=0), 32 * h, 32 * w]).flatten(1).float()
    coords = coords[None].repeat(B, 1, 1)
    coords[:, 0] = coords[:, 0] / 25.0
    coords[1, 0] += 0.5
    run_case("d24_video_coords", "d24_model", d24, dict(
        hidden_states=base["hidden_states"], encoder_hidden_states=base["encoder_hidden_states"],
        timestep=base["timestep"], encoder_attention_mask=mask, video_coords=coords), {})
    # (7) C++ with the float32 "upcast" attention kernel against diffusers' default SDPA: same reference.
    run_case("d24_upcast_kernel", "d24_model", d24, base, grid, kernel="upcast", reference_from="d24_rope_scale")

    # (6) bf16: the same model converted with .to(bfloat16), saved as the "bf16" variant, run in bf16.
    d24_bf16 = build(D24_CONFIG, 1).to(torch.bfloat16)
    d24_bf16.save_pretrained(os.path.join(root, "d24_model"), variant="bf16")
    bf16_inputs = {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                   for k, v in dict(base, encoder_attention_mask=mask).items()}
    bf16_inputs["timestep"] = base["timestep"]  # pipelines keep the timestep in float32
    run_case("d24_bf16", "d24_model", d24_bf16, bf16_inputs, grid, dtype="bf16", bound=BF16_BOUND, variant="bf16")

    # fp16: the fp32 folder, converted by the C++ loader as .half() does.
    d24_fp16 = build(D24_CONFIG, 1).half()
    fp16_inputs = {k: (v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                   for k, v in dict(base, encoder_attention_mask=mask).items()}
    fp16_inputs["timestep"] = base["timestep"]
    run_case("d24_fp16", "d24_model", d24_fp16, fp16_inputs, grid, dtype="fp16", bound=FP16_BOUND)

    # Original Lightricks single file: "model.diffusion_model." keys with the original names, plus VAE keys
    # that the transformer loader must leave out (inverse of scripts/convert_ltx_to_diffusers.py).
    lightricks = build(LIGHTRICKS_CONFIG, 3)
    renames = {"proj_in": "patchify_proj", "time_embed": "adaln_single", "norm_q": "q_norm", "norm_k": "k_norm"}
    original = {}
    for key, value in lightricks.state_dict().items():
        parts = [renames.get(part, part) for part in key.split(".")]
        original["model.diffusion_model." + ".".join(parts)] = value.contiguous()
    original["vae.decoder.conv_in.conv.weight"] = torch.zeros(4, 4, 3, 3, 3)
    save_file(original, os.path.join(root, "lightricks_model.safetensors"))
    with open(os.path.join(root, "lightricks_config.json"), "w") as fh:
        json.dump(dict(lightricks.config), fh)
    F, H, W = 2, 3, 4
    g = torch.Generator("cpu").manual_seed(3)
    run_case("lightricks_single_file", "lightricks_model.safetensors", lightricks, dict(
        hidden_states=torch.randn((2, F * H * W, 4), generator=g),
        encoder_hidden_states=torch.randn((2, 7, 8), generator=g),
        timestep=torch.tensor([999.0, 20.0]),
        encoder_attention_mask=torch.tensor([[1] * 7, [1] * 4 + [0] * 3]),
        rope_interpolation_scale=[8 / 25, 32.0, 32.0],
    ), dict(num_frames=F, height=H, width=W), model_format="lightricks")

    # (8) the rarer config fields.
    fields = build(FIELDS_CONFIG, 2)
    fields.save_pretrained(os.path.join(root, "fields_model"))
    F, H, W, L = 2, 3, 4, 5
    g = torch.Generator("cpu").manual_seed(2)
    run_case("fields", "fields_model", fields, dict(
        hidden_states=torch.randn((1, F * H * W, 6), generator=g),
        encoder_hidden_states=torch.randn((1, L, 12), generator=g),
        timestep=torch.tensor([437.5]),
        encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0]]).bool(),
        rope_interpolation_scale=[8 / 25, 32.0, 32.0],
    ), dict(num_frames=F, height=H, width=W))

    with open(os.path.join(root, "cases.json"), "w") as fh:
        json.dump(cases, fh, indent=1)


if __name__ == "__main__":
    main()
