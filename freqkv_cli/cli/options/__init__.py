"""Every option of the commands, defined once, and the groups the commands take them in.

A group is a dataclass whose fields are options (``ModelChoice``: --model, --base, --device...).
``@takes(model=MODEL, cache=CACHE, ...)`` puts a group's options into a command's signature, the
one Typer reads, and hands the command the dataclass built from them, as simonw/llm's option
decorators do for click. A command that takes a group in part says which options
(``OUTPUT.only("as_json", "quiet")``) or other defaults (``ANSWER.defaults(max_new_tokens=200)``).

One module a group (model, cache, answer, inputs, outputs); ``flags`` declares one option,
``taking`` puts groups into signatures. The commands take every name from here.
"""

from __future__ import annotations

from .answer import (
    ANSWER,
    AnswerChoice,
    MaxNewOpt,
    RepetitionOpt,
    SeedOpt,
    SystemOpt,
    TemperatureOpt,
    TopPOpt,
)
from .cache import (
    CACHE,
    COMPARED,
    CacheChoice,
    CacheOpt,
    CtxOpt,
    ExactOpt,
    RatioOpt,
    RecallOpt,
    RecentOpt,
    RereadOpt,
    SelectOpt,
    SinkOpt,
    WindowOpt,
)
from .flags import INPUT_PANEL, MODEL_PANEL, OUTPUT_PANEL, from_the_model, option
from .inputs import DOCUMENT_KINDS, INPUT, InputChoice, PagesOpt, PasswordOpt, PathArg, PathsArg
from .model import (
    MODEL,
    BaseOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    MaxMemoryOpt,
    ModelChoice,
    ModelOpt,
    QuantizeOpt,
    TrustOpt,
    UntunedOpt,
)
from .outputs import (
    LOGGED_OUTPUT,
    OUTPUT,
    JsonOpt,
    NoColorOpt,
    NoLogOpt,
    OutputChoice,
    PlotOpt,
    ProgressOpt,
    QuietOpt,
    SaveOpt,
)
from .taking import Options, takes

__all__ = [
    "ANSWER",
    "CACHE",
    "COMPARED",
    "DOCUMENT_KINDS",
    "INPUT",
    "INPUT_PANEL",
    "LOGGED_OUTPUT",
    "MODEL",
    "MODEL_PANEL",
    "OUTPUT",
    "OUTPUT_PANEL",
    "AnswerChoice",
    "BaseOpt",
    "CacheChoice",
    "CacheOpt",
    "CtxOpt",
    "DeviceMapOpt",
    "DeviceOpt",
    "DtypeOpt",
    "ExactOpt",
    "InputChoice",
    "JsonOpt",
    "MaxMemoryOpt",
    "MaxNewOpt",
    "ModelChoice",
    "ModelOpt",
    "NoColorOpt",
    "NoLogOpt",
    "Options",
    "OutputChoice",
    "PagesOpt",
    "PasswordOpt",
    "PathArg",
    "PathsArg",
    "PlotOpt",
    "ProgressOpt",
    "QuantizeOpt",
    "QuietOpt",
    "RatioOpt",
    "RecallOpt",
    "RecentOpt",
    "RepetitionOpt",
    "RereadOpt",
    "SaveOpt",
    "SeedOpt",
    "SelectOpt",
    "SinkOpt",
    "SystemOpt",
    "TemperatureOpt",
    "TopPOpt",
    "TrustOpt",
    "UntunedOpt",
    "WindowOpt",
    "from_the_model",
    "load_model",  # below: imported when first asked for
    "option",
    "takes",
]


def __getattr__(name: str) -> object:
    # load_model brings torch and transformers: a command's --help must not wait for them.
    # ModelChoice looks it up here, where tests replace it.
    if name == "load_model":
        from ...models.loading import load_model

        globals()["load_model"] = load_model
        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
