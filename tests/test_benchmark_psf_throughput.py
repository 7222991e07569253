"""benchmarks/psf_throughput.py at toy size: writes its JSON and logs a run to the benchmarks experiment."""

import json
import subprocess
import sys

from mlflow.tracking import MlflowClient


def test_psf_throughput_writes_json_and_logs_run(tmp_path, repo_root):
    out = tmp_path / "results" / "benchmarks" / "psf_throughput.json"
    proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "psf_throughput.py"), "--config",
                           str(repo_root / "config" / "smoke.yaml"), "--elements", "3", "--n", "32",
                           "--repeats", "1", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["n_superpixels"] == 32 and result["elements"] == 3
    for key in ("psf_forward_s", "fft_pair_forward_s", "psf_forward_backward_s", "fft_pair_forward_backward_s"):
        assert result[key] > 0
    assert result["ratio_forward"] == result["psf_forward_s"] / result["fft_pair_forward_s"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'results' / 'mlflow.db').as_posix()}")
    experiment = client.get_experiment_by_name("benchmarks")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["dko.kind"] == "benchmark"
    assert runs[0].data.metrics["ratio_forward"] == result["ratio_forward"]
    assert runs[0].data.params["n_superpixels"] == "32"
