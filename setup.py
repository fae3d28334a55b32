"""The one thing pyproject.toml cannot say stably: the optional C extensions (issue 14).

loracheck._fused (src/loracheck/_fused.c) computes a factor's statistics in one pass, and
loracheck._json_line (src/loracheck/_json_line.c) writes a report's per-layer JSON lines; where
they do not compile (no C compiler, no Python headers, MSVC), ``optional=True`` lets pip install
loracheck anyway: loracheck.fused then uses numpy, and the JSON renderer Python's json. No
-march flags: the kernel picks AVX2 or AVX-512 at run time.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "loracheck._fused",
            sources=["src/loracheck/_fused.c"],
            depends=["src/loracheck/_fused_kernel.h"],
            optional=True,
        ),
        # The per-layer JSON lines of a report (render/json_out.py; issue 14, point 4).
        Extension(
            "loracheck._json_line",
            sources=["src/loracheck/_json_line.c"],
            depends=["src/loracheck/_pow10.h"],
            optional=True,
        ),
    ]
)
