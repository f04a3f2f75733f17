"""dbeta: D-BETA (ICML 2025) ECG-text model as a Hugging Face Hub package.

The four hub files (configuration/modeling/processing/pipeline_dbeta.py) are installed as
top-level modules because the Hub serves them flat next to config.json; the command line and
the training/evaluation library are installed under the `dbeta` namespace.
"""
from setuptools import setup

HUB_MODULES = ["configuration_dbeta", "modeling_dbeta", "processing_dbeta", "pipeline_dbeta"]
# train/ holds one folder per job; each is a subpackage of dbeta.train.
TRAIN_JOBS = ["pretraining", "demo", "data", "evaluation", "conversion"]
READER_REQUIREMENTS = ["wfdb>=4.1", "h5py>=3.8", "pyarrow>=14", "matplotlib>=3.7"]
ONNX_REQUIREMENTS = ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"]
# Hospital exports (docs/processor.md, "Clinical formats"): DICOM waveforms (pydicom), EDF/EDF+
# (edfio), GE MUSE / Philips / HL7 aECG XML, SCP-ECG and ISHNE (ecgdatakit, whose XML goes through
# defusedxml). Imported lazily by processing_dbeta: loading a model never needs them.
CLINICAL_REQUIREMENTS = ["pydicom>=2.4", "edfio>=0.4", "ecgdatakit>=2.0,<3", "defusedxml>=0.7"]
# Independent decoders/writers the clinical-format tests check our readings against.
CLINICAL_TEST_REQUIREMENTS = ["sierraecg>=0.4", "ishneholterlib>=2020.5"]
# The web demo (`dbeta demo`, the Space's app.py): Gradio 6 (css and limits are launch() arguments there).
WEB_REQUIREMENTS = ["gradio>=6.0,<7"]

setup(
    name="dbeta",
    version="0.1.0",
    description="D-BETA: masked ECG-text auto-encoders as discriminative learners (transformers remote code)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    py_modules=HUB_MODULES,
    packages=["dbeta", "dbeta.train", *(f"dbeta.train.{job}" for job in TRAIN_JOBS)],
    package_dir={"dbeta": "dbeta", "dbeta.train": "train", **{f"dbeta.train.{job}": f"train/{job}" for job in TRAIN_JOBS}},
    package_data={
        "dbeta": ["label_descriptions.json", "assets/*", "assets/*/*"],
        "dbeta.train": ["configs/*"],
        "dbeta.train.evaluation": ["resources/*"],
    },
    include_package_data=True,
    install_requires=[
        # 2.13.0 (the CPU wheel on our machines) satisfies this range; install it first.
        "torch>=2.4,<3",
        "transformers>=5.0,<6",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "tokenizers>=0.20",
        "numpy>=1.24",
        "scipy>=1.10",
    ],
    extras_require={
        # Inference (`dbeta embed / classify / report`, the pipeline on files): the record readers
        # (wfdb, which brings pandas; h5py), Parquet output and the report picture. Nothing here
        # trains; `tests/test_inference_dependencies.py` runs the commands without the train extra.
        "readers": READER_REQUIREMENTS,
        "train": [
            *READER_REQUIREMENTS,
            "accelerate>=1.0",
            "datasets>=3.0",
            "scikit-learn>=1.3",
            "pandas>=2.0",
            "tensorboard>=2.14",
            "tqdm>=4.60",
        ],
        # ONNX export (`dbeta export-onnx`) and onnxruntime inference; onnxruntime alone runs the
        # exported zero-shot scorer.
        "onnx": ONNX_REQUIREMENTS,
        "clinical": CLINICAL_REQUIREMENTS,
        # The web demo reads every supported upload, hospital exports included.
        "web": [*READER_REQUIREMENTS, *CLINICAL_REQUIREMENTS, *WEB_REQUIREMENTS],
        # The tests export and run the ONNX towers, read the clinical formats and drive the web demo in
        # headless Chromium (Selenium; the browser itself comes from apt, see .ci/run), so CI's
        # `.[train,dev]` brings them.
        "dev": ["pytest>=7.4", *ONNX_REQUIREMENTS, *CLINICAL_REQUIREMENTS, *CLINICAL_TEST_REQUIREMENTS, *WEB_REQUIREMENTS, "selenium>=4.20"],
    },
    entry_points={"console_scripts": ["dbeta=dbeta.cli:main"]},
)
