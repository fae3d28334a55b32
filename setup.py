"""The one thing pyproject.toml cannot say stably: the optional C extension (issue 14).

loracheck._fused (src/loracheck/_fused.c) computes a factor's statistics in one pass; where it
does not compile (no C compiler, no Python headers, MSVC), ``optional=True`` lets pip install
loracheck anyway and loracheck.fused uses numpy. No -march flags: the kernel picks AVX2 or
AVX-512 at run time.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "loracheck._fused",
            sources=["src/loracheck/_fused.c"],
            depends=["src/loracheck/_fused_kernel.h"],
            optional=True,
        )
    ]
)
