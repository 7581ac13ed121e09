"""`freqkv info`: the model, the device, the cache settings and what they cost in memory."""

from __future__ import annotations

import json
import sys

from ...sizes import format_bytes, format_count, parse_size
from .. import options as o
from ..readout import Readout
from ..running import load


def info(
    model: o.ModelOpt = "default",
    base: o.BaseOpt = None,
    untuned: o.UntunedOpt = False,
    window: o.WindowOpt = None,
    ctx: o.CtxOpt = "32k",
    sink: o.SinkOpt = None,
    recent: o.RecentOpt = None,
    ratio: o.RatioOpt = None,
    exact: o.ExactOpt = None,
    cache: o.CacheOpt = "hybrid",
    device: o.DeviceOpt = "auto",
    dtype: o.DtypeOpt = "auto",
    trust_remote_code: o.TrustOpt = False,
    as_json: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    no_color: o.NoColorOpt = False,
) -> None:
    """Show the model, device, cache settings and the KV memory they need.

    The KV memory of the window is compared with a full cache holding --ctx tokens.

    Examples:

      freqkv info

      freqkv info --model ./my-model --window 8k --ctx 128k --json
    """
    choice = o.CacheChoice(cache, window, sink, recent, ratio, ctx, exact)
    choice.check()
    readout = Readout(quiet=quiet, force_progress=False, no_color=o.color_disabled(no_color))
    loaded = load(o.ModelChoice(model, base, device, dtype, trust_remote_code, untuned), readout)
    policy = choice.policy_for(loaded)
    config = loaded.model.config
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = loaded.model.dtype.itemsize
    per_token = 2 * config.num_hidden_layers * heads * head_dim * element
    length = parse_size(ctx) if ctx else 32768
    window_entries = length if policy.kind == "full" else min(policy.window, length)
    data = {
        "model": loaded.name,
        "family": loaded.family,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "native_window": loaded.native_window,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "cache": policy.kind,
        "window": policy.window,
        "sink": policy.sink,
        "recent": policy.recent,
        "ratio": policy.ratio,
        "tuned_settings": loaded.settings is not None,
        "retrieval_heads": [list(h) for h in loaded.head_profile.heads] if loaded.head_profile else None,
        "head_profile": str(loaded.head_profile_path) if loaded.head_profile_path else None,
        "kv_bytes_per_token": per_token,
        "ctx": length,
        "kv_bytes_window": per_token * window_entries,
        "kv_bytes_full_at_ctx": per_token * length,
    }
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    lines = [
        f"model         {data['model']} ({data['family']}, {format_count(data['parameters'])} parameters)",
        f"device        {data['device']} · {data['dtype']}",
        f"native window {format_count(data['native_window'])} tokens",
        f"cache         {policy.kind} · window {format_count(policy.window)} · sink {policy.sink} · "
        f"recent {policy.recent} · ratio {policy.ratio}"
        + (" (from the checkpoint's freqkv.json)" if loaded.settings is not None else ""),
        f"KV per token  {format_bytes(per_token)}",
        "retrieval     "
        + (
            f"{len(loaded.head_profile.heads)} heads from {loaded.head_profile_path}"
            if loaded.head_profile is not None
            else "no head profile: the hybrid cache weighs every head (freqkv calibrate finds them)"
        ),
        f"KV memory     {format_bytes(data['kv_bytes_window'])} for {format_count(length)} tokens "
        f"(a full cache would need {format_bytes(data['kv_bytes_full_at_ctx'])})",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
