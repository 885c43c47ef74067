"""Reports of an explanation run: figures (PNG), an HTML page and a 3D Slicer scene bundle (.mrb).

- :mod:`.figures`: orthogonal planes and projections of an attribution over its image
  (matplotlib, imported lazily: ``pip install 'slicer-medxai[demo]'``);
- :mod:`.html`: one self-describing HTML page linking the figures and files;
- :mod:`.mrb`: a ``.mrb`` scene written without Slicer (see docs/adr/0002-scene-files-without-slicer.md).
"""

from .mrb import (DIVERGING_TABLE_NAME, SceneSegmentation, SceneVolume, diverging_rgba, table_name, write_mrb,
                  write_seg_nrrd)

__all__ = ["DIVERGING_TABLE_NAME", "SceneSegmentation", "SceneVolume", "diverging_rgba", "table_name", "write_mrb",
           "write_seg_nrrd"]
