"""Typed engine errors. Every message says what was wrong and what to do about it;
the UI shows them verbatim (as ``gr.Error``)."""


class StudioError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidInputError(StudioError, ValueError):
    """A user-supplied value is out of range, empty or malformed."""


class UnknownWordError(InvalidInputError):
    """A prompt contains words the model's tokenizer cannot represent."""

    def __init__(self, words: list[str], model_name: str = "this model", label: str = ""):
        self.words = words
        listed = ", ".join(repr(w) for w in words)
        super().__init__(
            f"{label + ': ' if label else ''}{model_name} does not know the word(s) {listed}. "
            "Use words from its vocabulary (see the model card)."
        )


class JobTooCostlyError(InvalidInputError):
    """A job would hold the model longer than this studio allows (studio.costs.JobCost over Engine.max_job_cost)."""


class ModelLoadError(StudioError):
    """A model source does not exist or is not a diffusion model we can load."""


class DeviceOutOfMemoryError(StudioError):
    """The accelerator ran out of memory; the engine stays usable with smaller settings."""


class CancelledError(StudioError):
    """The job was cancelled between steps."""
