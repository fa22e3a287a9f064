"""ftjax: fine-tuning pretrained language models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="ftjax",
    version="0.1.0",
    description="Fine-tuning methods for BERT, GPT-2, Llama and T5 in JAX/Flax, compared.",
    # configs/ ships as ftjax.configs: the default run needs it outside the source tree.
    packages=[*find_packages(include=["ftjax", "ftjax.*"]), "ftjax.configs"],
    package_dir={"ftjax.configs": "configs"},
    # config.json shapes of published checkpoints (no weights) for `python -m ftjax.plan`
    package_data={"ftjax.planning": ["model_shapes/*/config.json", "model_shapes/README.md"]},
    python_requires=">=3.10",
    # The stack measured to work together (pinned). transformers is used for
    # tokenizers and configs only: v5 ships no Flax models.
    install_requires=[
        "jax==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "ml_collections==1.1.0",
        "datasets>=5.2,<5.3",
        "transformers>=5.23,<5.24",
        "safetensors",
        "numpy",
        "scipy",  # Pearson / Spearman for regression
        "rouge-score==0.1.2",  # ROUGE-L for generation tasks (Google's reference package)
        "gguf==0.19.0",  # llama.cpp's checkpoint format (the bundled SmolLM2)
        "matplotlib>=3.10,<3.12",  # ftjax.report plots (written as PNG, Agg backend)
    ],
    extras_require={
        # Accelerators: the same jax, with its CUDA 12 or TPU runtime.
        "cuda12": ["jax[cuda12]==0.10.2"],
        "tpu": ["jax[tpu]==0.10.2"],
        # torch is the CPU numerics reference for the parity tests, never a runtime dependency.
        # seqeval and scikit-learn are the references the metric tests compare against.
        "test": [
            "pytest",
            "pytest-xdist",
            "torch==2.13.0",
            "ruff",
            "seqeval==1.2.2",
            "scikit-learn",
            "accelerate==1.15.0",  # transformers needs it to load a GGUF reference model
            "peft==0.21.2",  # the reference ftjax's adapter exports are loaded with
            "tensorboardX",  # the reference for the event files ftjax writes itself
        ],
    },
)
