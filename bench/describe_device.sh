#!/usr/bin/env bash
# gpu_check.sh's first stage: the device, driver, versions, NVRTC, commit and source hash.
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "from convgpu.core import provenance as p; print('commit', p.commit() or 'unknown (no git: set CONVGPU_COMMIT)', ' source_hash', p.source_hash())"
python3 -m convgpu info
# the NVRTC that builds the kernels here (the compile tier pins the same: Makefile RUNTIME_NVRTC)
python3 -c "from cupy.cuda import nvrtc; print('NVRTC', nvrtc.getVersion())"
python3 -m pip show nvidia-cuda-nvrtc 2>/dev/null | grep -i '^version'
exit 0
