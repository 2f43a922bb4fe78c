"""`GenkitDiffusionPipeline`: a real Diffusers pipeline for class-conditional models (labels, guidance, id2label)."""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .sampling import sample


class GenkitDiffusionPipeline(DiffusionPipeline):
    """UNet + scheduler with class labels and classifier-free guidance; the null label is the last class embedding."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, id2label: dict | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # JSON turns int keys into strings; keep them as strings in the config, convert on use
        self.register_to_config(id2label={str(k): v for k, v in (id2label or {}).items()})

    @property
    def id2label(self) -> dict[int, str]:
        """Class index -> class name."""
        return {int(k): v for k, v in (self.config.id2label or {}).items()}

    @property
    def null_label(self) -> int | None:
        """The label index that means 'no class' (used for the unconditional half of guidance)."""
        n = self.unet.config.num_class_embeds
        return None if n is None else n - 1

    def labels_to_ids(self, class_labels: list[int | str] | torch.Tensor | int | str) -> torch.Tensor:
        """Class indices or names -> a label tensor, with a clear error for unknown ones."""
        if isinstance(class_labels, torch.Tensor):
            ids = class_labels.long().flatten().tolist()
        else:
            items = class_labels if isinstance(class_labels, (list, tuple)) else [class_labels]
            by_name = {v: k for k, v in self.id2label.items()}
            ids = []
            for item in items:
                if isinstance(item, str) and not item.isdigit():
                    if item not in by_name:
                        raise ValueError(f"unknown class name {item!r}; known: {list(by_name)}")
                    ids.append(by_name[item])
                else:
                    ids.append(int(item))
        limit = self.null_label if self.null_label is not None else 0
        bad = [i for i in ids if not 0 <= i < limit]
        if bad:
            raise ValueError(f"class label(s) {bad} out of range: this model knows {limit} classes (0..{limit - 1})")
        return torch.tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: list[int | str] | torch.Tensor | int | str | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        image: torch.Tensor | None = None,
        strength: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback=None,
    ) -> ImagePipelineOutput | tuple:
        """Generate `batch_size` images (or one per class label); `image` + `strength` < 1 denoises from that image."""
        labels = None
        if class_labels is not None:
            if self.null_label is None:
                raise ValueError("this model is unconditional: leave class_labels unset")
            labels = self.labels_to_ids(class_labels)
            if len(labels) == 1 and batch_size > 1:
                labels = labels.repeat(batch_size)
            batch_size = len(labels)
        elif self.null_label is not None:
            labels = torch.full((batch_size,), self.null_label, dtype=torch.long)  # unconditional sample
        if image is not None:
            batch_size = len(image)
            if labels is not None and len(labels) != batch_size:
                labels = labels[:1].repeat(batch_size)
        x = sample(self.unet, self.scheduler, batch_size, num_inference_steps, generator, labels, guidance_scale, self.null_label,
                   init_images=image, strength=strength, callback=callback)
        images = ((x.float() + 1) / 2).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        elif output_type == "pt":
            images = torch.from_numpy(images).permute(0, 3, 1, 2)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
