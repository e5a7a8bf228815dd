"""Hostile and malformed inputs, built on demand (nothing binary is committed).

- ``safetensors_files``: malformed safetensors files, each judged by the safetensors library itself;
- ``torch_files``: pickles and zips that try to run code, allocate, expand, or mislead;
- ``run``: a runner that feeds a folder of cases to the command line in one fresh process and reports exit
  code, output, time and memory per case (the test asserts on its report).
"""
