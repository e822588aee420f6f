"""Builds flax_video._onednn, the C++ extension behind flax_video/onednn.py and
flax_video/winograd.py: XLA FFI handlers for oneDNN's 3D convolutions and for
a Winograd F(2, 3) conv kernel of its own (AVX-512 or AVX2, chosen at run time). It needs only jaxlib's FFI
headers and a C++17 compiler (oneDNN itself is opened at run time); where it
cannot be built the install goes on without it and convs run through XLA.
Everything else about the package is in pyproject.toml."""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jaxlib
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildSourcesAtOnce(build_ext):
    """Compiles the extension's sources in parallel, one compiler per core:
    the oneDNN and the two Winograd ISA files take 6-10 s each, the bulk of
    `pip install`'s build."""

    def build_extension(self, ext):
        compile_sources = self.compiler.compile

        def compile_each(sources, *args, **kwargs):
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                objects = pool.map(lambda source: compile_sources([source], *args, **kwargs), sources)
                return [obj for one in objects for obj in one]

        self.compiler.compile = compile_each
        try:
            super().build_extension(ext)
        finally:
            del self.compiler.compile


setup(cmdclass={"build_ext": BuildSourcesAtOnce}, ext_modules=[Extension(
    "flax_video._onednn",
    sources=["flax_video/csrc/onednn_conv.cc", "flax_video/csrc/winograd.cc",
             "flax_video/csrc/winograd_avx512.cc", "flax_video/csrc/winograd_avx2.cc"],
    include_dirs=[str(Path(jaxlib.__file__).parent / "include")],
    extra_compile_args=["-std=c++17", "-O3", "-fvisibility=hidden", "-pthread"],
    libraries=["dl"],
    extra_link_args=["-pthread"],
    language="c++",
    optional=True,
)])
