from setuptools import Extension, setup

setup(ext_modules=[Extension("watlinks", ["watlinks.c"], extra_compile_args=["-O3"])])
