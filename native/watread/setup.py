from setuptools import Extension, setup

LIBDEFLATE = [
    "libdeflate/lib/deflate_decompress.c",
    "libdeflate/lib/gzip_decompress.c",
    "libdeflate/lib/crc32.c",
    "libdeflate/lib/utils.c",
    "libdeflate/lib/x86/cpu_features.c",
    "libdeflate/lib/arm/cpu_features.c",
]

setup(
    ext_modules=[
        Extension("watlinks", ["watlinks.c"], extra_compile_args=["-O3"]),
        # libdeflate's symbols stay inside the module: nothing else in the process can clash with them.
        Extension("watgunzip", ["watgunzip.c", *LIBDEFLATE], include_dirs=["libdeflate"],
                  extra_compile_args=["-O2", "-fvisibility=hidden"]),
    ]
)
