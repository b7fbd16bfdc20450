from setuptools import Extension, setup

# The vendored, unmodified libdeflate (see third_party/README.md).
LIBDEFLATE_DIR = "third_party/libdeflate"
LIBDEFLATE = [
    f"{LIBDEFLATE_DIR}/lib/deflate_decompress.c",
    f"{LIBDEFLATE_DIR}/lib/gzip_decompress.c",
    f"{LIBDEFLATE_DIR}/lib/crc32.c",
    f"{LIBDEFLATE_DIR}/lib/utils.c",
    f"{LIBDEFLATE_DIR}/lib/x86/cpu_features.c",
    f"{LIBDEFLATE_DIR}/lib/arm/cpu_features.c",
]

setup(
    ext_modules=[
        Extension("watlinks", ["watlinks.c"], extra_compile_args=["-O3"]),
        # libdeflate's symbols stay inside the module: nothing else in the process can clash with them.
        Extension("watgunzip", ["watgunzip.c", *LIBDEFLATE], include_dirs=[LIBDEFLATE_DIR],
                  extra_compile_args=["-O2", "-fvisibility=hidden"]),
    ]
)
