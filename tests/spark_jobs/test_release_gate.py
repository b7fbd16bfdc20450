"""The release gate's bounds when too few images were scored ok for any release to pass."""

from __future__ import annotations

import pytest

from altlake.config import Settings
from altlake.stats import StageStats, chain
from spark_jobs.quality import QualityGateError
from spark_jobs.release import gate


@pytest.mark.parametrize("n_ok", [0, 1])
def test_too_few_ok_scores_fail_the_gate_in_its_own_words_before_gx(n_ok, tmp_path):
    """With 0 or 1 ok scores no pairs count lies in [1, floor(0.95 * ok)]: one line says so (GX
    would only refuse its own bounds), and no Spark work is started (spark=None would fail)."""
    stages = chain([StageStats("scored", 13, {}), StageStats("downloaded", 13, {"http_4xx": 13 - n_ok})])
    with pytest.raises(QualityGateError, match=rf"{n_ok} ok score\(s\) allow at most 0 pair\(s\) .*KEPT_FRACTION_MAX=0.95.* at least 1"):
        gate(None, Settings(lake_dir=str(tmp_path)), None, None, stages, str(tmp_path / "docs"), 0.28)
