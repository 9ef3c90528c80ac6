"""Attention maps from a trained model: ABN's own map, and Grad-CAM-family baselines on the same model.

``abn`` is one forward pass. ``cam`` (Zhou et al., 2016) is also forward-only: the perception branch's
last feature maps weighted by the classifier row of the explained class. The gradient-based methods
(``gradcam``, ``gradcam++``, ...) come from the ``pytorch-grad-cam`` package (``pip install
'abnet[gradcam]'``), run on the perception branch's last stage, i.e. on the same network the ABN
map is fed into.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.device import model_device
from ..errors import AbnetError
from ..metrics import upsample_maps
from ..models import ABNOutput, perception_logits

# Our name -> the pytorch-grad-cam class that computes it.
GRAD_CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
}
METHODS = ("abn", "cam", *GRAD_CAM_METHODS)


@dataclass
class Explanation:
    """Maps of one method for a batch of images, at image resolution.

    maps:       (N, H, W) in [0, 1], or (N, T, H, W) for a multi-task ABN (one map per attribute).
    logits:     (N, K) the perception branch's prediction.
    att_logits: (N, K) the attention branch's, None for a plain model.
    targets:    (N,) the class each map explains (the predicted one unless given); None for multi-task maps.
    method:     the method's name.
    """

    maps: Tensor
    logits: Tensor
    att_logits: Tensor | None
    targets: Tensor | None
    method: str


def explain(model: nn.Module, images: Tensor, method: str = "abn", targets: Tensor | None = None,
            batch_size: int = 128) -> Explanation:
    """Attention maps of ``model`` for ``images`` (its normalised input, (N, C, H, W)) by ``method``.

    ``abn`` needs an ABN; the baselines work on an ABN (on its perception branch, which reads the
    ABN's own map) and on a plain model of abnet's zoo or ``abnet.wrap``. ``model`` may be the fast
    copy from :func:`abnet.models.inference.inference_model` for ``abn``. The model runs in eval mode and
    is left in the mode it was in. Each batch moves to the model's device; the explanation comes back on the CPU.
    """
    check_method(model, method)
    if len(images) == 0:
        raise AbnetError("no images to explain")
    device = model_device(model)
    was_training = model.training
    model.eval()  # maps and predictions of the trained model, batch-norm statistics untouched
    try:
        parts = [_on_cpu(_explain_batch(model, images[i:i + batch_size].to(device), method,
                                        None if targets is None else targets[i:i + batch_size]))
                 for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return Explanation(
        maps=torch.cat([p.maps for p in parts]),
        logits=torch.cat([p.logits for p in parts]),
        att_logits=None if parts[0].att_logits is None else torch.cat([p.att_logits for p in parts]),
        targets=None if parts[0].targets is None else torch.cat([p.targets for p in parts]),
        method=method,
    )


def check_method(model: nn.Module, method: str) -> None:
    """Refuse, before any work, a method this model or this installation cannot run (one-line reason)."""
    from ..models.inference import InferenceModel

    if method not in METHODS:
        raise AbnetError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    if method == "abn":
        if not isinstance(model, InferenceModel) and not hasattr(model, "attention_branch"):
            raise AbnetError("method abn needs an ABN model (its forward returns an attention map); this model "
                             "is a plain classifier: use a baseline such as gradcam")
        return
    if isinstance(model, InferenceModel):
        raise AbnetError(f"method {method} needs the model itself (hooks, gradients), not its inference copy")
    if _is_multitask(model):
        raise AbnetError(f"method {method} explains one class of a single-task model; for a multi-task ABN "
                         "use abn (one map per attribute)")
    target_layer(model)
    if method == "cam" and not isinstance(getattr(_head(model), "fc", None), nn.Linear):
        raise AbnetError("method cam needs a head of global average pooling and one linear layer (abnet's "
                         "zoo models); use gradcam for this model")
    if method in GRAD_CAM_METHODS:
        try:
            import pytorch_grad_cam  # noqa: F401
        except ImportError:
            raise AbnetError(f"method {method} needs the pytorch-grad-cam package: "
                             "pip install 'abnet[gradcam]'") from None


def _explain_batch(model: nn.Module, x: Tensor, method: str, targets: Tensor | None) -> Explanation:
    size = tuple(x.shape[2:])
    if method == "abn":
        with torch.inference_mode():
            out = model(x)
        maps = _resize(out.attention, size)
        multi = out.attention.shape[1] > 1
        chosen = None if multi else _chosen(out.logits, targets)
        return Explanation(maps if multi else maps[:, 0], out.logits.float(), out.att_logits.float(), chosen, method)
    if method == "cam":
        return _cam(model, x, targets)
    return _grad_cam(model, x, method, targets)


def _on_cpu(e: Explanation) -> Explanation:
    """A batch's explanation on the CPU, where metrics, overlays and reports read it."""
    return Explanation(e.maps.cpu(), e.logits.cpu(), None if e.att_logits is None else e.att_logits.cpu(),
                       None if e.targets is None else e.targets.cpu(), e.method)


def _branch_logits(out: ABNOutput | Tensor) -> tuple[Tensor, Tensor | None]:
    """(perception logits, attention-branch logits or None for a plain model), as float32."""
    att = out.att_logits.float() if isinstance(out, ABNOutput) else None
    return perception_logits(out).float(), att


def _chosen(logits: Tensor, targets: Tensor | None) -> Tensor:
    return logits.argmax(1) if targets is None else targets.to(logits.device)


def _resize(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """(N, T, h, w) -> (N, T, H, W) bilinear, clamped to [0, 1]."""
    n, t = maps.shape[:2]
    return upsample_maps(maps.reshape(n * t, 1, *maps.shape[2:]), size).reshape(n, t, *size).clamp(0, 1)


def _is_multitask(model: nn.Module) -> bool:
    return getattr(model, "num_tasks", None) is not None


def minmax(maps: Tensor) -> Tensor:
    """Each map (the last two dimensions) stretched to span [0, 1]; a flat map becomes all zeros."""
    flat = maps.flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def _head(model: nn.Module) -> nn.Module:
    """The perception branch (an ABN) or the head (a plain model): where the baselines look."""
    head = getattr(model, "perception", None) or getattr(model, "head", None)
    if head is None:
        raise AbnetError(f"cannot find the classifier of a {type(model).__name__}: baselines need an abnet model "
                         "(abnet.create_model or abnet.wrap), which has a perception branch or head")
    return head


def target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage before the classifier's pooling: the layer Grad-CAM and CAM read."""
    head = _head(model)
    for name in ("stages", "trunk"):
        if isinstance(getattr(head, name, None), nn.Module):
            return getattr(head, name)
    raise AbnetError(f"cannot find the last stage of {type(head).__name__}; baselines need a head with "
                     "`stages` (abnet's zoo) or `trunk` (abnet.wrap)")


class _Logits(nn.Module):
    """An ABN seen as a plain classifier (its perception logits), which is what pytorch-grad-cam expects."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return perception_logits(self.model(x))


def _cam(model: nn.Module, x: Tensor, targets: Tensor | None) -> Explanation:
    """CAM: sum_k w_ck A_k over the last stage's maps A and the linear classifier's row w_c of class c."""
    fc = _head(model).fc
    seen: list[Tensor] = []
    hook = target_layer(model).register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            out = model(x)
            logits, att = _branch_logits(out)
            chosen = _chosen(logits, targets)
            cams = F.relu(torch.einsum("nkhw,nk->nhw", seen[-1].float(), fc.weight[chosen].float()))
    finally:
        hook.remove()
    maps = minmax(upsample_maps(cams.unsqueeze(1), tuple(x.shape[2:])))
    return Explanation(maps, logits, att, chosen, "cam")


def _grad_cam(model: nn.Module, x: Tensor, method: str, targets: Tensor | None) -> Explanation:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.inference_mode():
        out = model(x)
    logits, att = _branch_logits(out)
    chosen = _chosen(logits, targets)
    cam_class = getattr(pytorch_grad_cam, GRAD_CAM_METHODS[method])
    with cam_class(model=_Logits(model), target_layers=[target_layer(model)]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in chosen])
    return Explanation(torch.from_numpy(maps).float().clamp(0, 1), logits, att, chosen, method)
