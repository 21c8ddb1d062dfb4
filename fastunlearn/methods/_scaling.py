"""Loss scaling (fp16 autocast) and the non-finite step skip, folded into a method's Gram and weights."""

from __future__ import annotations

import torch
from torch import Tensor


class LossScaling:
    """A ``torch.amp.GradScaler``'s protocol for steps that combine several captured gradients.

    ``GradScaler.unscale_``/``step`` read ``.grad``, which a method's gradients never sit in; this
    does the same through the method instead: losses are scaled before backward, the Gram divided by
    ``scale**2`` and the weights by ``scale`` (the gradients themselves are never rewritten), a
    non-finite step is skipped and the scale updated with the scaler's own growth/backoff settings
    (``GradScaler.update(new_scale)``, its public way to set the scale). The scale stays on the
    device; the skip decision is one bool read per step.
    """

    def __init__(self, scaler: torch.amp.GradScaler | None, skip_nonfinite: bool) -> None:
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.checks = self.scaler is not None or bool(skip_nonfinite)
        self.skipped_steps = 0
        self._good_steps = 0  # finite steps since the scale last changed (GradScaler's growth tracker)

    def scale(self, loss: Tensor) -> Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def current(self, like: Tensor) -> Tensor:
        """The scale the next losses get, as a 0-d tensor on ``like``'s device and dtype (1 without a
        scaler; no host read)."""
        one = torch.ones((), dtype=like.dtype, device=like.device)
        return one if self.scaler is None else self.scaler.scale(one)

    def unscale_gram(self, gram: Tensor) -> Tensor:
        return gram if self.scaler is None else gram / self.current(gram).square()

    def unscale(self, weights: Tensor) -> Tensor:
        return weights if self.scaler is None else weights / self.current(weights)

    def skip(self, weights: Tensor, gram: Tensor) -> bool:
        """Whether this step must be skipped (a non-finite Gram or weights). A skipped step backs the
        scale off here; a taken one calls :meth:`stepped` once the update has used the scale."""
        self._device = gram.device
        found_inf = bool(~(torch.isfinite(gram).all() & torch.isfinite(weights).all()))
        if found_inf:
            self.skipped_steps += 1
            self._good_steps = 0
            self._rescale(self.scaler.get_backoff_factor() if self.scaler is not None else 1.0)
        return found_inf

    def stepped(self) -> None:
        """A finite step went through: the scale grows after ``growth_interval`` of them."""
        if self.scaler is None:
            return
        self._good_steps += 1
        if self._good_steps == self.scaler.get_growth_interval():
            self._good_steps = 0
            self._rescale(self.scaler.get_growth_factor())
        else:
            self._rescale(1.0)

    def _rescale(self, factor: float) -> None:
        # update(new_scale) also closes the scaler's step, as update() after GradScaler.step does.
        if self.scaler is not None:
            scale = self.current(torch.ones((), dtype=torch.float32, device=self._device))
            self.scaler.update(new_scale=scale * factor)
