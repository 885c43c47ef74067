"""MedXAIViewer: MedXAI results in a web browser, on slicer-core and trame-slicer (DESIGN.md, section 7).

``medxai view DIR`` serves a result folder of ``medxai explain``, ``medxai demo`` or ``medxai cohort``:
the image with the attribution as a colour layer, segments as outlines, three slice views and a 3D view
rendered by Slicer's own MRML code on the server, the display panel of the Slicer module, the per-structure
table, the provenance, and a cohort's ranked QA list (docs/adr/0003-web-viewer.md).

Modules:

- ``command``: the ``medxai view`` subcommand, found by MedXAILib's command line through the
  ``medxai.commands`` entry point; imports nothing heavy until it runs.
- ``folder``: what a result folder holds (headers only, no slicer-core), and the inside-the-folder check.
- ``scene``: the folder in an MRML scene through MedXAIBridge (nodes, colour tables, display).
- ``routes``: the folder's files and ``/status`` over HTTP.
- ``app``: the trame page and server.

Layering: this package may import slicer-core, vtk, trame, trame-slicer, MedXAIBridge and MedXAILib;
MedXAILib never imports it (``Testing/Repo/test_import_rules.py``).
"""

__all__ = ["command", "folder", "scene", "routes", "app"]
