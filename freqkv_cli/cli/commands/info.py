"""`freqkv info`: the model, the device, the cache settings and what they cost in memory."""

from __future__ import annotations

import sys

from ...config import config_path, load_config
from ...logs import log_path
from ...sizes import format_bytes, format_count
from .. import options as o
from ..output import write_json


@o.takes(
    model=o.MODEL, cache=o.CACHE.without("max_chunk").defaults(ctx="32k"), output=o.OUTPUT.without("progress")
)
def info(*, model: o.ModelChoice, cache: o.CacheChoice, output: o.OutputChoice) -> None:
    """Show the model, device, cache settings and the KV memory they need.

    The KV memory of the window is compared with a full cache holding --ctx tokens. The
    config file in use (FREQKV_CONFIG, else $XDG_CONFIG_HOME/freqkv/config.toml, else
    ~/.config/freqkv/config.toml) and what it sets are shown too.

    Examples:

      freqkv info

      freqkv info --model ./my-model --window 8k --ctx 128k --json
    """
    from ...models.quantize import describe_weights, parameter_count, weight_facts  # torch: not for --help

    cache.settings.check()
    user_config = load_config()  # read before the model: a bad file fails first
    loaded = model.load(output.readout)
    policy = loaded.cache_policy(cache.settings)
    config = loaded.model.config
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = loaded.model.dtype.itemsize
    per_token = 2 * config.num_hidden_layers * heads * head_dim * element
    length = cache.ctx_tokens or 32768
    window_entries = length if policy.kind == "full" else min(policy.window, length)
    data = {
        "model": loaded.name,
        "family": loaded.family,
        "parameters": parameter_count(loaded.model),  # packed 4-bit weights counted as weights
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
        **weight_facts(loaded.model),  # weight_bytes, quantization, by device, device_map
        "config_file": str(user_config.path) if user_config.path is not None else None,
        "config": user_config.values,  # what it sets; flags and environment variables win
        "log": str(log_path()),
    }
    if output.as_json:
        write_json(data)
        return
    lines = [
        f"model         {data['model']} ({data['family']}, {format_count(data['parameters'])} parameters)",
        f"device        {data['device']} · {data['dtype']}",
        f"weights       {describe_weights(data)}",
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
        f"config        {_config_line(data['config_file'], data['config'])}",
        f"log           {data['log']}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def _config_line(path: str | None, values: dict[str, str]) -> str:
    if path is None:
        return f"none (no {config_path()})"
    settings = ", ".join(f"{key} = {value}" for key, value in values.items()) or "sets nothing"
    return f"{path}: {settings}"
