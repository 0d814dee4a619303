"""mlc_jax: multilingual safety alignment (MLC, MPO, MSD) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="mlc_jax",
    version="0.1.0",
    description="Multilingual safety alignment of LLMs (MLC, MPO, MSD) in JAX/Flax NNX",
    python_requires=">=3.11",
    packages=find_packages(include=["mlc_jax", "mlc_jax.*"]),
    package_data={"mlc_jax": ["data/builtin/*.json"]},
    install_requires=[
        "jax>=0.6",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "transformers>=5.0",
        "ml-collections>=1.0",
        "safetensors>=0.4",
        "tqdm",
        "absl-py",
        "tensorboardX",
        "grain",
        "numpy",
        # Every file of a workdir but Orbax's goes through epath: a local path or a URL (gs://, with the 'gcs' extra).
        "etils[epath]",
        # TFDS builders (mlc_jax/data/tfds_builders), stored as ArrayRecord and read without TensorFlow;
        # tensorflow-datasets needs importlib_resources but does not declare it; openpyxl reads XSafety's .xlsx.
        "tensorflow-datasets>=4.9.10",
        "importlib_resources",
        "array_record",
        "openpyxl",
        # Evaluation (mlc_jax/eval): the API judge's HTTP client; reports' plots (bar hatches per bar need 3.10).
        "httpx>=0.27",
        "matplotlib>=3.10",
    ],
    extras_require={
        # libtpu: the TPU compiler; on a CPU machine `python -m mlc_jax.compile` compiles for a TPU topology with it
        # (the pin is the one jax[tpu] 0.10.2 names). On a TPU VM install 'jax[tpu]' instead.
        "tpu": ["libtpu==0.0.42.*"],
        # gs:// workdirs (docs/training.md, "Workdirs on Cloud Storage"): epath reaches GCS through fsspec's gcsfs.
        "gcs": ["etils[epath-gcs]"],
        # pytest-xdist: scripts/test.sh runs the suite in two worker processes (both cores of a CI machine).
        "test": ["pytest>=8", "pytest-xdist>=3.2", "torch==2.13.0", "mpmath", "libtpu==0.0.42.*"],
    },
)
