#!/usr/bin/env python3
"""Oracle for loading original Lightricks single files (transformer + VAE in one file) against diffusers 0.42.1.

For each case a small random LTXVideoTransformer3DModel and AutoencoderKLLTXVideo are written twice under
OUT/single_file/<case>/:
  transformer/, vae/           save_pretrained folders (the configs the C++ loader and from_single_file take)
  lightricks.safetensors       the same weights under the original names: "model.diffusion_model.*" and "vae.*"
                               (plus the per-channel statistics diffusers drops), made by inverting diffusers'
                               convert_ltx_{transformer,vae}_checkpoint_to_diffusers and checked by running them
  reference.safetensors        decode of `latents` (and `temb`) by AutoencoderKLLTXVideo.from_single_file(file,
                               config=vae/)
cases.json: per case the VAE layout, diffusers' infer_diffusers_model_type and the bound.

Cases: the 0.9.0-style, 0.9.1-style (timestep-conditioned decoder, last_time_embedder) and 0.9.5-style VAEs; the
0.9.5 one has an encoder conv_out of 2048 input channels, the marker diffusers' conversion uses to pick the 0.9.5
key table (its last encoder stage has no resnets to keep it small).
"""

import argparse
import json
import os
import re
import shutil
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeline_oracle  # noqa: E402  (build_transformer)
import vae_oracle  # noqa: E402  (build, CONFIG_090, CONFIG_091, CONFIG_095)

from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ltx_transformer_checkpoint_to_diffusers,
    convert_ltx_vae_checkpoint_to_diffusers,
    infer_diffusers_model_type,
)
from diffusers.utils import logging as diffusers_logging  # noqa: E402

diffusers_logging.set_verbosity_error()

FP32_BOUND = 1e-4

CONFIG_095_WIDE_OUT = dict(vae_oracle.CONFIG_095, block_out_channels=(8, 16, 32, 256, 2048),
                           layers_per_block=(1, 1, 1, 0, 0))

TRANSFORMER_RENAMES = [("proj_in", "patchify_proj"), ("time_embed", "adaln_single"), ("norm_q", "q_norm"),
                       ("norm_k", "k_norm")]


def transformer_to_original(state):
    out = {}
    for key, value in state.items():
        parts = [dict(TRANSFORMER_RENAMES).get(p, p) for p in key.split(".")]
        out["model.diffusion_model." + ".".join(parts)] = value
    check = convert_ltx_transformer_checkpoint_to_diffusers(dict(out))
    assert check.keys() == state.keys(), "transformer names do not round-trip"
    return out


STRUCTURE = re.compile(r"^(encoder|decoder)\.(mid_block|(?:down|up)_blocks\.\d+(?:\.(?:downsamplers\.0|upsamplers\.0|"
                       r"conv_out|conv_in))?)(\..*)$")


def vae_original_key(key, forward):
    """The original name diffusers' conversion maps to `key`: candidates are tried through `forward`."""
    candidates = []
    base = key.replace("resnets", "res_blocks").replace("conv_shortcut.conv", "conv_shortcut")
    base = base.replace("norm3.", "norm3.norm.")
    base = re.sub(r"^decoder\.time_embedder", "decoder.last_time_embedder", base)
    base = re.sub(r"^decoder\.scale_shift_table", "decoder.last_scale_shift_table", base)
    if key == "latents_mean":
        candidates.append("vae.per_channel_statistics.mean-of-means")
    elif key == "latents_std":
        candidates.append("vae.per_channel_statistics.std-of-means")
    m = STRUCTURE.match(base)
    if m:
        kind = "down_blocks" if m.group(1) == "encoder" else "up_blocks"
        candidates += [f"vae.{m.group(1)}.{kind}.{i}{m.group(3)}" for i in range(10)]
    candidates.append("vae." + base)
    found = [c for c in candidates if forward(c) == key]
    assert len(found) >= 1, f"no original name for {key}"
    return found[0]


def vae_to_original(state):
    layout_probe = {"vae.encoder.conv_out.conv.weight": state["encoder.conv_out.conv.weight"]}
    if "decoder.time_embedder.timestep_embedder.linear_1.weight" in state:
        layout_probe["vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight"] = torch.zeros(1)

    def forward(original):
        # The layout markers decide the key table; the candidate's tensor is found by identity afterwards.
        probe = dict(layout_probe)
        marker = probe.get(original, torch.zeros(1))
        probe[original] = marker
        converted = convert_ltx_vae_checkpoint_to_diffusers(probe)
        return next((k for k, v in converted.items() if v is marker), None)

    out = {vae_original_key(k, forward): v for k, v in state.items()}
    channels = state["latents_mean"].shape[0]
    out["vae.per_channel_statistics.channel"] = torch.arange(channels, dtype=torch.float32)
    out["vae.per_channel_statistics.mean-of-stds"] = torch.ones(channels)
    check = convert_ltx_vae_checkpoint_to_diffusers(dict(out))
    assert check.keys() == state.keys(), f"VAE names do not round-trip: {sorted(set(check) ^ set(state))[:8]}"
    for k in state:
        assert torch.equal(check[k], state[k]), k
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "single_file")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    gen = torch.Generator().manual_seed(99)
    cases = []
    for name, config, seed, latents in [
        ("v090", vae_oracle.CONFIG_090, 21, torch.randn(1, 8, 2, 4, 4, generator=gen)),
        ("v091", vae_oracle.CONFIG_091, 22, torch.randn(1, 8, 2, 2, 2, generator=gen)),
        ("v095", CONFIG_095_WIDE_OUT, 23, torch.randn(1, 8, 2, 2, 2, generator=gen)),
    ]:
        folder = os.path.join(root, name)
        transformer = pipeline_oracle.build_transformer(seed=seed)
        vae = vae_oracle.build(config, seed=seed + 100)
        transformer.save_pretrained(os.path.join(folder, "transformer"))
        vae.save_pretrained(os.path.join(folder, "vae"))
        original = transformer_to_original(transformer.state_dict())
        original.update(vae_to_original(vae.state_dict()))
        file = os.path.join(folder, "lightricks.safetensors")
        save_file({k: v.contiguous() for k, v in original.items()}, file)

        model_type = infer_diffusers_model_type(dict(original))
        sf_vae = AutoencoderKLLTXVideo.from_single_file(file, config=os.path.join(folder, "vae")).eval()
        sf_transformer = LTXVideoTransformer3DModel.from_single_file(file, config=os.path.join(folder, "transformer"))
        for a, b in [(sf_vae, vae), (sf_transformer, transformer)]:
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), "from_single_file differs"
        temb = torch.tensor([0.05]) if config.get("timestep_conditioning") else None
        sample = sf_vae.decode(latents, temb).sample
        tensors = {"latents": latents, "decoded": sample.float().contiguous()}
        if temb is not None:
            tensors["temb"] = temb
        save_file(tensors, os.path.join(folder, "reference.safetensors"))
        cases.append(dict(name=name, model_type=model_type, layout=name, bound=FP32_BOUND))
    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main()
