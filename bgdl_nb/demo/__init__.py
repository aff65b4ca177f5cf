"""The demo origin server used by ``bgdl demo``, the notebooks, the tests and the benchmarks."""

from .origin import Origin, content, resource_sha256, resource_url
from .process import RemoteOrigin, start_origin_process

__all__ = ["Origin", "RemoteOrigin", "content", "resource_sha256", "resource_url", "start_origin_process"]
