"""Build script: the C extension ``shmflags._native`` is optional.

When a C compiler or the Python headers are missing, or compilation fails, the package
still installs and runs on the pure-Python evaluator (``shmflags._pure``), with one warning
at build time and one at import time (see ``shmflags.backend``).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

def _native_files(suffix: str) -> list:
    if not os.path.isdir("native"):
        return []
    return sorted(os.path.join("native", f) for f in os.listdir("native") if f.endswith(suffix))


NATIVE_SOURCES = _native_files(".c")
# A header change must rebuild every object: they share struct layouts (layout.h, record.h).
NATIVE_HEADERS = _native_files(".h")


class OptionalBuildExt(build_ext):
    """Build the extension if possible; never fail the install because of it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "no native"
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        if os.environ.get("SHMFLAGS_REQUIRE_NATIVE") == "1":
            raise exc
        sys.stderr.write(
            "WARNING: shmflags C extension could not be built (%s); "
            "the pure-Python evaluator will be used.\n" % exc
        )


extra_compile_args = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
extra_link_args = []
if os.environ.get("SHMFLAGS_SANITIZE") == "1":
    extra_compile_args += ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    extra_link_args += ["-fsanitize=address,undefined"]

ext_modules = []
if NATIVE_SOURCES and os.environ.get("SHMFLAGS_NO_NATIVE") != "1":
    ext_modules.append(
        Extension(
            "shmflags._native",
            sources=NATIVE_SOURCES,
            include_dirs=["native"],
            depends=NATIVE_HEADERS,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
