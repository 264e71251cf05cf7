"""Names shared across the package: AnnData keys, output files, label offsets."""

#: ``adata.obsm`` key of the latent embedding (scanpy-style ``X_<method>``)
LATENT_KEY = "X_scarkids"
#: ``adata.obsm`` key of the refined latent (DDPM / SDEdit refinement)
REFINED_KEY = "X_scarkids_refined"
#: ``adata.uns`` key written by ``SCARKIDS.setup_anndata``
SETUP_KEY = "_scarkids_setup"

#: label index of an unlabelled cell in the label tensors of the loss
UNLABELED = -1
#: the noise network's label index of cell type k is ``k + LABEL_OFFSET``; index 0 is the
#: null label ("unconditional"), so that new cell types are appended without moving rows
LABEL_OFFSET = 1
#: the most clusters an unsupervised model reports when none is given: the default of
#: ``SCARKIDS(n_labels=...)`` and the value of ``global.n_cell_types: null``
DEFAULT_N_LABELS = 10

#: the files ``--mode inference`` writes to the output folder
LATENT_FILE = "latent_embeddings.npy"
EXPRESSION_FILE = "corrected_expression.h5ad"
PREDICTIONS_FILE = "cell_type_predictions.csv"
DE_FILE = "differential_expression.csv"
RUN_INFO_FILE = "run_info.json"
#: the checkpoint of the selected epoch, and the resumable one, in ``training.checkpoint_dir``
BEST_CHECKPOINT = "best_model.pt"
LAST_CHECKPOINT = "last.pt"
