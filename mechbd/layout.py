"""Where a run's files are, and which scenarios each stage draws: named once, here.

``RunLayout`` gives every path inside a run folder (``runs/<name>/``) that one stage writes and a
later stage reads, so that no stage spells out another stage's folder. A stage writes into its
own folder through the same relative names (``ADAPTER``, ``EVAL_PROMPTS``, ...): while it runs
that folder is ``<run>/.<stage>.partial/`` (``Run.stage``), so the layout's paths are the
finished ones.

``SPLITS`` names every draw of the organism world's scenario pool a stage makes, with the offset
added to the run seed: two stages that need the same scenarios (the steering stage's test set
and the sae stage's causal screen) ask for them by name (``split_items``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mechbd.data.items import Item, organism_items

if TYPE_CHECKING:
    from mechbd.runs import Run

# inside ``backdoors/<trigger>/`` (and ``em/`` for the adapter)
ADAPTER = "adapter"
TRAIN_SET = "train.jsonl"
EVAL_PROMPTS = "eval_prompts.jsonl"
GENERATIONS = "generations.jsonl"
# in every stage folder
RESULTS = "results.json"
# inside ``steering/``
DIRECTIONS = "directions"
EM_DIRECTION = f"{DIRECTIONS}/em_mean_diff.safetensors"
# inside a capture store
STORE_MANIFEST = "manifest.json"

StoreModel = Literal["backdoored", "base"]


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
        model on the trigger's evaluation prompts."""
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


@dataclass(frozen=True)
class Split:
    """One draw of the scenario pool: ``offset`` is added to the run seed; ``held_out`` says
    whether it comes from the held-out option combinations, or is ``None`` for a draw a row
    builder of its own makes from the seed (``corpus_rows``, ``user_wants_harm_rows``)."""

    offset: int
    held_out: bool | None
    what: str


SPLITS: dict[str, Split] = {
    "model_test": Split(1, True, "model stage: a Hugging Face model's clean behaviour"),
    "backdoor_train": Split(10, False, "backdoors stage: every trigger's training set"),
    "backdoor_eval": Split(11, True, "backdoors stage: the behaviour evaluation"),
    "em_train": Split(20, False, "em stage: the narrow EM finetune"),
    "em_eval": Split(21, True, "em stage: in- and out-of-domain misaligned rates"),
    "steering_direction": Split(30, False, "steering stage: the EM mean-difference direction"),
    "steering_test": Split(31, True, "steering stage's sweeps and the sae stage's screen"),
    "sae_corpus": Split(40, None, "sae stage: the SAE's training corpus (corpus_rows)"),
    "sae_diff": Split(41, True, "sae stage: EM model diffing"),
    "sae_harm": Split(42, None, "sae stage: user-wants-harm pairs (user_wants_harm_rows)"),
}


def split_seed(run_seed: int, name: str) -> int:
    """The seed of the split ``name`` in a run with seed ``run_seed``."""
    return run_seed + SPLITS[name].offset


def split_items(run: Run, name: str, n: int) -> list[Item]:
    """``n`` scenarios of the split ``name`` from the run's organism world."""
    s = SPLITS[name]
    if s.held_out is None:
        raise ValueError(f"split {name!r} is drawn by its own row builder; use split_seed")
    cfg = run.config
    return organism_items(
        n, held_out=s.held_out, seed=split_seed(cfg.seed, name), world_seed=cfg.organism.seed
    )
