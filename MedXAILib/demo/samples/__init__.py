"""Built-in sample data, generated in code or shipped with a dependency: nothing is downloaded.

- :func:`ct_phantom`: a deterministic abdominal CT phantom (HU) with organ labels and lesions of
  known centre, radius and contrast (:mod:`.phantom`);
- :func:`pet_channel` / :func:`pet_ct_phantom`: a PET-like SUV map for it (:mod:`.pet`);
- :func:`mni_t1`: the MNI ICBM152 2009 T1 template with GM and WM maps, read from the files that
  ship inside nilearn (:mod:`.mni`; needs ``pip install nilearn``, part of the ``demo`` extra).

The demo models in ``Resources/Models`` were trained on these phantoms (:mod:`MedXAILib.demo.training`).
"""

from __future__ import annotations

from .mni import mni_t1
from .pet import ORGAN_SUV, pet_channel, pet_ct_phantom
from .phantom import CLASS_NAMES, LESION_ORGANS, ORGAN_HU, Lesion, ct_phantom, sphere_mask

__all__ = ["CLASS_NAMES", "LESION_ORGANS", "ORGAN_HU", "ORGAN_SUV", "Lesion", "ct_phantom", "pet_channel",
           "pet_ct_phantom", "mni_t1", "sphere_mask"]
