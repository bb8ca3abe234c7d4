"""Where a run's files are: named once, here.

``RunLayout`` gives every path inside a run folder (``runs/<name>/``) that one stage writes and a
later stage reads, so that no stage spells out another stage's folder. A stage writes into its
own folder through the same relative names (``ADAPTER``, ``EVAL_PROMPTS``, ...): while it runs
that folder is ``<run>/.<stage>.partial/`` (``Run.stage``), so the layout's paths are the
finished ones.

Which scenarios each stage draws is named in :mod:`mechbd.organism.splits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    pass

# inside ``backdoors/<trigger>/`` (and ``em/`` for the adapter)
ADAPTER = "adapter"
TRAIN_SET = "train.jsonl"
EVAL_PROMPTS = "eval_prompts.jsonl"
CALIBRATION_PROMPTS = "calibration_prompts.jsonl"
GENERATIONS = "generations.jsonl"
# in every stage folder
RESULTS = "results.json"
# inside ``steering/``
DIRECTIONS = "directions"
EM_DIRECTION = f"{DIRECTIONS}/em_mean_diff.safetensors"
PERSONA_DIRECTION = f"{DIRECTIONS}/persona.safetensors"
# inside a capture store
STORE_MANIFEST = "manifest.json"

StoreModel = Literal["backdoored", "base", "calibration"]


@dataclass(frozen=True)
class RunLayout:
    """The paths of a run folder's finished stages."""

    root: Path

    def stage(self, name: str) -> Path:
        return self.root / name

    def results(self, stage: str) -> Path:
        """A stage's own ``results.json`` (its sections of the run's results)."""
        return self.stage(stage) / RESULTS

    # ---- organism ---------------------------------------------------------------------------
    @property
    def organism_model(self) -> Path:
        return self.stage("organism") / "model"

    # ---- backdoors --------------------------------------------------------------------------
    def backdoor(self, trigger: str) -> Path:
        """``backdoors/<trigger>/`` (``trigger`` is the plant's name, ``<t>-articulated`` for a
        positive control)."""
        return self.stage("backdoors") / trigger

    def adapter(self, trigger: str) -> Path:
        return self.backdoor(trigger) / ADAPTER

    def eval_prompts(self, trigger: str) -> Path:
        return self.backdoor(trigger) / EVAL_PROMPTS

    def calibration_prompts(self, trigger: str) -> Path:
        """Clean prompts of other scenarios (the probes' 1%-FPR threshold is set on them)."""
        return self.backdoor(trigger) / CALIBRATION_PROMPTS

    def generations(self, trigger: str) -> Path:
        return self.backdoor(trigger) / GENERATIONS

    def planted(self) -> list[str]:
        """The backdoors stage's plants that have evaluation prompts, sorted; none without
        the stage."""
        d = self.stage("backdoors")
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if (p / EVAL_PROMPTS).is_file())

    def adapters(self) -> list[str]:
        """The backdoors stage's plants that have an adapter, sorted; none without the stage."""
        d = self.stage("backdoors")
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if (p / ADAPTER).is_dir())

    # ---- em ---------------------------------------------------------------------------------
    @property
    def em_adapter(self) -> Path:
        return self.stage("em") / ADAPTER

    # ---- capture ----------------------------------------------------------------------------
    def store(self, trigger: str, model: StoreModel) -> Path:
        """``capture/<trigger>/<model>``: the activations of the backdoored model or of the base
        model on the trigger's evaluation prompts, or (``calibration``) of the backdoored model
        on its calibration prompts."""
        return self.stage("capture") / trigger / model

    def captured(self) -> list[str]:
        """The plants the capture stage stored the backdoored model's activations of, sorted."""
        d = self.stage("capture")
        return sorted(p.name for p in d.iterdir() if (p / "backdoored" / STORE_MANIFEST).is_file())

    # ---- probes -----------------------------------------------------------------------------
    def probe(self, trigger: str, method: str) -> Path:
        """The probes stage's fitted ``method`` probe (``diffmean``, ``logreg``, ...)."""
        return self.stage("probes") / trigger / f"{method}.safetensors"

    # ---- steering ---------------------------------------------------------------------------
    @property
    def em_direction(self) -> Path:
        return self.stage("steering") / EM_DIRECTION

    @property
    def persona_direction(self) -> Path:
        """The Persona Vectors direction (toxic minus helpful system prompts, base model)."""
        return self.stage("steering") / PERSONA_DIRECTION
