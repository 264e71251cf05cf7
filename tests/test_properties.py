"""Property-based tests: random small count matrices and obs tables either train and embed
(a finite latent of the right shape) or stop with a documented one-line ScarkidsError."""

from __future__ import annotations

import copy
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
from scarkids.data.files import write_h5ad
from scarkids.data.preprocess import check_columns, zero_count_cells

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


@SETTINGS
@given(adata=datasets(), supervised=st.booleans())
def test_python_api_trains_or_raises_a_documented_error(adata, supervised):
    labels_key = "cell_type" if supervised else None
    try:
        check_columns(adata, "data", batch_key="batch", labels_key=labels_key)
        adata = zero_count_cells(adata, "data", layer=None, mode="drop")
        SCARKIDS.setup_anndata(adata, batch_key="batch", labels_key=labels_key)
        model = SCARKIDS(adata, n_latent=2, n_labels=2, seed=0, **SMALL)
        model.train(1, batch_size=8, progress_bar=False, device="cpu", seed=0)
        z = model.get_latent_representation(adata)
    except ScarkidsError as e:
        assert_documented(e)
        event(f"error: {str(e)[:40]}")
        return
    event("trained")
    assert z.shape == (adata.n_obs, 2)
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
        for argv in (
            ["train", "--config", "config.yaml"],
            ["infer", "--config", "config.yaml", "--data_path", "train.h5ad"],
        ):
            with _captured() as (out, err):
                rc = cli.main(argv)
            text = err.getvalue()
            assert rc in (0, 2), text
            if rc == 2:
                assert text.startswith("error: ") and text.count("\n") == 1, text
                assert "Traceback" not in text
                event(f"{argv[0]} error: {text.split(':')[1].strip()[:20]}")
                return
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
