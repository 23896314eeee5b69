"""What ``medzsad <command> --help`` says: required keys, defaults, outputs and examples.

Plain text for argparse's raw formatter; kept apart from the parser so that ``main.py`` stays short.
Nothing here imports torch: ``--help`` must answer at once.
"""

from __future__ import annotations

CONFIG_NOTE = """\
configuration: --config FILE.yaml (see configs/) and key=value overrides, applied in order; every key
is validated before any work starts. `medzsad config show -c FILE.yaml [key=value ...]` prints the
resolved configuration and where each value came from.
quick path without weights: add backbone=tiny (a tiny random-weight CLIP, no download; scores mean nothing)."""

PREDICT = f"""\
Anomaly maps, overlays and scores for image files, folders, DICOM series and NIfTI/NRRD volumes.

required:
  -i/--input PATH   an image, a folder or a scan; repeat -i for several inputs
  checkpoint=FILE   for methods that learn prompts (anomalyclip, faprompt, cops): a medzsad
                    .safetensors checkpoint or an official .pth; the baselines (clip, winclip) need none
outputs (in -o/--output, default predictions/):
  scores.csv        one row per image or slice: pseudonymous id and anomaly score
  sample_index.local.csv  pseudonymous id -> input file (stays local: it holds your paths)
  maps/, overlays/  anomaly maps and heat overlays of 2-D images
  volumes/          maps written back on the scan's grid (NIfTI), for volumes and DICOM series
  decisions.csv, masks/  with calibration=FILE (thresholds of `medzsad calibrate`)
  only the folders that were written are named at the end.
engines: --engine torch (default) or --engine onnx with checkpoint=model.onnx of `medzsad export`
  (onnxruntime on the CPU; preprocessing and calibration come from the file).

{CONFIG_NOTE}

examples:
  medzsad predict -c configs/anomalyclip.yaml checkpoint=runs/anomalyclip/epoch_15.safetensors -i scans/
  medzsad predict -c configs/clip.yaml backbone=tiny -i scan1.nii.gz -i scan2.dcm -o out/
  medzsad predict --engine onnx checkpoint=export/model.onnx -i scans/ -o out/
"""

TEST = f"""\
Zero-shot evaluation on one or more target datasets: per-category and mean metrics.

required:
  data.test=[...]   the target datasets: a meta.json manifest or a folder (holding one, or plain images);
                    name them: data.test=[brainmri=/data/BrainMRI/meta.json,colondb=/data/CVC-ColonDB/]
  checkpoint=FILE   for methods that learn prompts (anomalyclip, faprompt, cops)
defaults: eval.batch_size=8, eval.output_dir=runs/test (configs/anomalyclip.yaml: runs/anomalyclip-test),
  exact pixel metrics (eval.pixel_bins=null), tracking.enabled=true (MLflow store ./mlflow.db,
  artifacts ./mlartifacts/ unless tracking.tracking_uri / tracking.artifact_location say otherwise)
outputs (in eval.output_dir): metrics.csv, metrics.json, scores_<dataset>.csv, maps/ (eval.save_maps=true);
  one MLflow run per dataset; the last lines name the run ids and the `medzsad ui --store ...` command.
progress: a bar on a terminal; one line every 30 s in logs (MEDZSAD_PROGRESS_INTERVAL=seconds).
repeated runs over one archive: data.cache_dir=DIR keeps the built samples (patient images: keep it local).

{CONFIG_NOTE}

examples:
  medzsad test -c configs/anomalyclip.yaml checkpoint=runs/anomalyclip/epoch_15.safetensors \\
      data.test=[brainmri=/data/BrainMRI/meta.json]
  medzsad test -c configs/clip.yaml backbone=tiny data.test=[mine=my_folder/] tracking.enabled=false
"""

CALIBRATE = f"""\
Decision thresholds from reference scans, written to a small calibration file (docs/decisions.md).

required:
  calibrate.reference=PATH  the reference scans (manifest or folder): normal scans only for the default
                            rule; labelled scans for calibrate.rule=f1max|youden|sensitivity
  checkpoint=FILE           for methods that learn prompts (anomalyclip, faprompt, cops)
defaults: calibrate.rule=conformal, calibrate.target_fpr=0.05 (a new normal scan from the same source is
  flagged with probability at most 0.05), calibrate.pixel_rule=pixel_rate, calibrate.output=runs/calibration.json
outputs: the calibration file (method, checkpoint digest, reference digest and count, rule, alpha, thresholds);
  `test` and `predict` use it with calibration=FILE and refuse it for another checkpoint.

{CONFIG_NOTE}

examples:
  medzsad calibrate -c configs/anomalyclip.yaml checkpoint=runs/anomalyclip/epoch_15.safetensors \\
      calibrate.reference=normals/ calibrate.target_fpr=0.05
  medzsad predict -c configs/anomalyclip.yaml checkpoint=... calibration=runs/calibration.json -i scans/
"""

TRAIN = f"""\
Learn a method's prompts on auxiliary data (the official AnomalyCLIP settings by default).

required:
  data.train=PATH   the auxiliary dataset: a meta.json manifest (medzsad prepare mvtec|visa ...) or a folder
defaults: train.epochs=15, train.batch_size=8, train.lr=0.001, train.seed=111, train.resume=true,
  train.output_dir=runs/train (configs/anomalyclip.yaml: runs/anomalyclip)
outputs (in train.output_dir): epoch_<N>.safetensors + epoch_<N>.json per epoch, state.pt (to resume);
  one MLflow run with the losses per epoch and the last checkpoint.

{CONFIG_NOTE}

examples:
  medzsad train -c configs/anomalyclip.yaml data.train=/data/mvtec_anomaly_detection/meta.json
  medzsad train -c configs/anomalyclip.yaml backbone=tiny data.train=aux/meta.json train.epochs=1
"""

FINETUNE = f"""\
Continue training a checkpoint's prompts on (medical) data.

required:
  data.train=PATH   the data to fine-tune on (meta.json manifest or folder)
  checkpoint=FILE   the checkpoint to continue from
outputs: as `medzsad train` (train.output_dir: epoch_<N>.safetensors, state.pt; an MLflow run).

{CONFIG_NOTE}

example:
  medzsad finetune -c configs/anomalyclip.yaml checkpoint=runs/anomalyclip/epoch_15.safetensors \\
      data.train=/data/BrainMRI/meta.json train.epochs=3 train.output_dir=runs/brain-ft
"""

TABLE = f"""\
Several methods x several datasets in one paper-style table.

required:
  --run NAME=CONFIG.yaml   a method column (repeat): its config brings method, checkpoint and backbone
  data.test=[...]          the datasets (rows), as for `medzsad test`
outputs (in eval.output_dir, default runs/test): table.md, and per column NAME/ with that method's
  metrics.csv, metrics.json and scores; one MLflow run per method and dataset.

{CONFIG_NOTE}

example:
  medzsad table --run anomalyclip=configs/anomalyclip.yaml --run clip=configs/clip.yaml \\
      data.test=[brainmri=/data/BrainMRI/meta.json]
"""

PREPARE = """\
Build a meta.json manifest (the official format) from a dataset's raw download layout.

required:
  DATASET   a dataset name; `medzsad prepare list` (or --list) prints every name with its expected layout
  RAW       the dataset's raw download folder
optional:
  OUT              where to write the manifest (default: RAW/meta.json)
  category=NAME    the category name of your own data (folder, volumes)
  --strict         refuse anomalous images without a mask (default: warn and keep them; their
                   category's pixel metrics then use only the images that have masks)
outputs: OUT (paths inside relative to its folder) and the number of images per category.

examples:
  medzsad prepare list
  medzsad prepare mvtec /data/mvtec_anomaly_detection
  medzsad prepare folder /data/my_scans category=brain     # my_scans/{good,<abnormal>...}/ [+ masks/]
"""

DEMO = """\
A self-contained smoke run on generated data with a tiny random-weight backbone (no download): it
trains for a few steps, evaluates, predicts and logs to MLflow. The numbers mean nothing.

outputs (in --workdir, default medzsad-demo/): data/, runs/train/, runs/test/, predictions/, mlflow.db,
  mlartifacts/; the last lines say what to run next.
"""

UI = """\
Start the MLflow UI on a local store, bound to loopback only (the UI has no login).

defaults: --store . (the folder holding mlflow.db and mlartifacts/), --port 5000
Ctrl-C stops the server and every process it started. From another machine use an SSH tunnel:
  ssh -L 5000:127.0.0.1:5000 host
"""

TRACKING_UPLOAD = f"""\
Upload results spooled while MLflow was unreachable (the run printed the spool folder).

required:
  SPOOL    the spool folder named by the run that could not log

{CONFIG_NOTE}
"""

CONFIG_SHOW = f"""\
Print the resolved configuration, one key per line, with where each value came from:
default, file (--config) or override (key=value; `backbone=tiny` expands to several keys).

{CONFIG_NOTE}

example:
  medzsad config show -c configs/anomalyclip.yaml backbone=tiny eval.batch_size=4
"""

EXPORT = f"""\
An ONNX file and a MONAI bundle of a trained method, checked against PyTorch on a batch.

required:
  checkpoint=FILE   the trained method to export (for methods that learn prompts)
optional:
  calibration=FILE  thresholds of `medzsad calibrate` for this model, checked and stored in the file
  reference=DIR     few-shot normal references (or a saved bank): the memory bank goes into the graph
outputs (in -o/--output, default export/): the ONNX file (--format onnx), the MONAI bundle (--format
  bundle), or both (--format all, the default); `medzsad predict --engine onnx checkpoint=FILE` runs it
  (with a calibration it also writes decisions.csv and masks/).

{CONFIG_NOTE}

examples:
  medzsad export -c configs/anomalyclip.yaml checkpoint=runs/anomalyclip/epoch_15.safetensors -o export/
  medzsad export -c configs/anomalyclip.yaml checkpoint=... calibration=runs/calibration.json \
      reference=site_normals/ fewshot.k=8 --format onnx
"""
