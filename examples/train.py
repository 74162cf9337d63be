"""Read a sealed WebDataset shard, "train", write a sealed safetensors checkpoint. Run it under the
node agent: `sovereign node exec --keys dataset/train -- python examples/train.py SHARD CHECKPOINT`."""

import io
import sys
import tarfile

import numpy as np
from safetensors.numpy import save

from enclave.workload import create_sealed, open_sealed

shard, checkpoint = sys.argv[1], sys.argv[2]
weights = np.zeros(4, dtype=np.float32)
with open_sealed(shard) as f, tarfile.open(fileobj=f, mode="r|") as tar:  # streamed, never on disk
    for member in tar:
        if member.name.endswith(".npy"):
            weights += np.load(io.BytesIO(tar.extractfile(member).read()))  # type: ignore[union-attr]
with create_sealed(checkpoint, key="model/main") as out:  # sealed with the model key (purpose write)
    out.write(save({"weights": weights}))
print(f"trained on {shard}: sealed checkpoint {checkpoint}")
