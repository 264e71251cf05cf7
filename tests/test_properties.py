"""Property-based tests: random small count matrices and obs tables either train and embed
(a finite latent of the right shape) or stop with the documented one-line ScarkidsError of an
input defect that the drawn data really has; data without any of those defects must train."""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scarkids import SCARKIDS, ScarkidsError, cli
from scarkids.cli.prepare import check_columns, zero_count_cells
from scarkids.data.files import write_h5ad

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SMALL = {
    "encoder_hidden_dims": [8],
    "decoder_hidden_dim": 8,
    "classifier_hidden_dim": 8,
    "noise_hidden_dim": 8,
    "timestep_embed_dim": 4,
    "n_diffusion_steps": 10,
}


pytestmark = pytest.mark.usefixtures("one_thread")


# odd names: unicode, spaces, punctuation, digits-only, the unlabelled marker, empty
NAMES = st.one_of(
    st.sampled_from(["0", "1", " ", "Unknown", "nan", "B cell/γδ", "細胞", "a\tb", "🧬", ""]),
    # NUL cannot be stored in an .h5ad string (h5py), so a file can never hold it
    st.text(
        st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), min_size=1, max_size=6
    ),
)


@st.composite
def datasets(draw) -> ad.AnnData:
    n_cells = draw(st.integers(0, 30))
    n_genes = draw(st.integers(1, 12))
    X = draw(
        st.lists(
            st.lists(st.integers(0, 40), min_size=n_genes, max_size=n_genes),
            min_size=n_cells,
            max_size=n_cells,
        )
    )
    X = np.asarray(X, dtype=np.float32).reshape(n_cells, n_genes)
    if n_cells and draw(st.booleans()):  # all-zero rows
        X[draw(st.lists(st.integers(0, n_cells - 1), max_size=3))] = 0
    if draw(st.booleans()):  # all-zero genes
        X[:, draw(st.lists(st.integers(0, n_genes - 1), max_size=3))] = 0
    batch_names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    label_names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    batches = draw(st.lists(st.sampled_from(batch_names), min_size=n_cells, max_size=n_cells))
    labels = draw(
        st.lists(
            st.one_of(st.sampled_from(label_names), st.none()), min_size=n_cells, max_size=n_cells
        )
    )
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(batches),
            "cell_type": pd.Series(labels, dtype=object),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    if draw(st.booleans()):
        obs["cell_type"] = obs["cell_type"].astype("category")
    var = pd.DataFrame(index=[f"gene_{j}·{chr(0x3B1 + j)}" for j in range(n_genes)])
    return ad.AnnData(X=X, obs=obs, var=var)


def assert_documented(error: ScarkidsError) -> None:
    message = str(error)
    assert message and "\n" not in message, repr(message)


#: the unlabelled marker: SCARKIDS.setup_anndata's and data.unlabeled_category's default
UNLABELLED = "Unknown"
#: clusters of an unsupervised CLI run when global.n_cell_types is unset (as in BASE)
CLI_CLUSTERS = 10


def training_defects(adata, supervised: bool, *, cli: bool = False) -> dict[str, str]:
    """The input defects of the drawn data that stop training, each with the pattern of the
    one-line error it raises (a message must match the pattern of a defect that is present).

    Computed from the data as drawn: labels missing (NaN) or equal to the unlabelled marker
    are unlabelled, and cells whose counts are all zero are dropped before the model sees
    them. ``cli``: also the checks of the ``train`` command (``_check_cluster_count``).
    """
    kept = np.asarray(adata.X).sum(axis=1) > 0
    labels = adata.obs["cell_type"].astype(object)
    labelled = labels.notna().to_numpy() & (labels != UNLABELLED).to_numpy()
    found = {}
    if adata.n_obs == 0:  # get_counts (API), read_h5ad (CLI)
        found["no cells"] = r"is empty \(0 cells x \d+ genes"
    if supervised and not labels.notna().any():  # check_columns (no cells: vacuously)
        found["no label in any cell"] = r"obs\['cell_type'\] has no labels \(all NaN\)"
    if adata.n_obs and not kept.any():  # zero_count_cells
        found["every cell has zero counts"] = r"every cell has zero counts in the genes used"
    if supervised and not (labelled & kept).any():  # SCARKIDS(...), train()
        found["no labelled cell among those kept"] = (
            r"obs\['cell_type'\] has no labelled cells; pass labels_key=None"
            r"|supervised training needs labelled cells, but none are labelled"
        )
    if cli and not supervised and kept.sum() < CLI_CLUSTERS:  # _check_cluster_count
        found["fewer cells than clusters"] = (
            rf": {int(kept.sum())} cells, fewer than the {CLI_CLUSTERS} clusters of "
            "unsupervised training"
        )
    return found


def inference_defects(adata) -> dict[str, str]:
    """Defects that stop ``infer`` on the train file once training succeeded: a batch all
    of whose cells have zero counts was dropped with them, so the model does not know it,
    while inference keeps every cell of the file."""
    kept = np.asarray(adata.X).sum(axis=1) > 0
    batches = adata.obs["batch"].astype(str).to_numpy()
    if set(batches[~kept]) - set(batches[kept]):
        return {"a batch with zero counts only": r"obs\['batch'\] has categories unknown"}
    return {}


def assert_explained(message: str, defects: dict[str, str]) -> None:
    """``message`` is the error of one of ``defects``, the defects the input really has."""
    assert defects, f"error on data without a known defect: {message!r}"
    matched = sorted(name for name, pattern in defects.items() if re.search(pattern, message))
    assert matched, f"{message!r} is not the error of any defect of the data: {sorted(defects)}"
    event(f"error for: {', '.join(matched)}")


@SETTINGS
@given(adata=datasets(), supervised=st.booleans())
def test_python_api_trains_or_raises_a_documented_error(adata, supervised):
    labels_key = "cell_type" if supervised else None
    defects = training_defects(adata, supervised)
    n_kept = int((np.asarray(adata.X).sum(axis=1) > 0).sum())
    try:
        check_columns(adata, "data", batch_key="batch", labels_key=labels_key)
        adata = zero_count_cells(adata, "data", layer=None, mode="drop")
        SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key=labels_key)
        model = SCARKIDS(adata, n_latent=2, n_labels=2, seed=0, **SMALL)
        model.train(1, batch_size=8, progress_bar=False, device="cpu", seed=0)
        z = model.get_latent_representation(adata)
    except ScarkidsError as e:
        assert_documented(e)
        assert_explained(str(e), defects)
        return
    assert not defects, f"trained despite {sorted(defects)}"
    event("trained")
    assert z.shape == (n_kept, 2)
    assert np.isfinite(z).all()


BASE = {
    "global": {"latent_dim": 2, "n_diffusion_steps": 10, "n_genes": None, "supervised": True},
    "data": {"train_data_path": "train.h5ad", "val_data_path": None},
    "encoder": {"hidden_dims": [8]},
    "classifier": {"hidden_dim": 8},
    "likelihood": {"hidden_dim": 8},
    "ddpm_backward": {"noise_hidden_dim": 8, "timestep_embed_dim": 4},
    "training": {"n_epochs": 1, "batch_size": 8, "device": "cpu"},
    "inference": {"n_refinement_steps": 5, "device": "cpu"},
}


@SETTINGS
@given(adata=datasets(), supervised=st.booleans())
def test_cli_train_and_infer_succeed_or_fail_cleanly(adata, supervised):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        mp.chdir(root)
        adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")  # None -> NaN
        write_h5ad(adata, root / "train.h5ad")  # pandas 3 strings too
        cfg = copy.deepcopy(BASE)
        cfg["global"]["supervised"] = supervised
        (root / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
        for argv, defects in (
            (["train", "--config", "config.yaml"], training_defects(adata, supervised, cli=True)),
            (
                ["infer", "--config", "config.yaml", "--data_path", "train.h5ad"],
                inference_defects(adata),
            ),
        ):
            with _captured() as (out, err):
                rc = cli.main(argv)
            text = err.getvalue()
            assert rc in (0, 2), text
            if rc == 2:
                assert text.startswith("error: ") and text.count("\n") == 1, text
                assert "Traceback" not in text
                assert_explained(text.removeprefix("error: ").rstrip("\n"), defects)
                event(f"{argv[0]} failed")
                return
            assert not defects, f"{argv[0]} succeeded despite {sorted(defects)}"
        event("trained and inferred")
        latent = np.load(root / "results" / "latent_embeddings.npy")
        assert latent.shape[0] == adata.n_obs and np.isfinite(latent).all()


class _captured:
    """Redirect stdout / stderr (hypothesis cannot use pytest's function-scoped capsys)."""

    def __enter__(self):
        import contextlib
        import io

        self.out, self.err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self.out))
        self._stack.enter_context(contextlib.redirect_stderr(self.err))
        return self.out, self.err

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


def test_unsupervised_with_fewer_cells_than_clusters():
    adata = ad.AnnData(
        X=np.array([[3, 0, 1], [0, 2, 5]], dtype=np.float32),
        obs=pd.DataFrame({"batch": pd.Categorical(["a", "b"])}, index=["c0", "c1"]),
    )
    SCARKIDS.setup_anndata(adata, batch_key="batch")
    model = SCARKIDS(adata, n_latent=2, n_labels=4, seed=0, **SMALL)
    try:
        model.train(1, batch_size=8, progress_bar=False, device="cpu", seed=0)
    except ScarkidsError as e:
        assert_documented(e)
        return
    assert np.isfinite(model.get_latent_representation(adata)).all()
