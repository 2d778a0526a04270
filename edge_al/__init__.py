"""edge-al: edge active learning on OpenVINO.

The line side: ingest and cache images, score pools with OpenVINO, rank what to annotate next,
take annotations, serve it all over HTTP. Training and export live in the separate ``export``
package (install ``edge-al[train]``); nothing here imports torch, onnx or nncf.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
