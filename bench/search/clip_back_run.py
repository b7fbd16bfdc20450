"""Start clip-retrieval's clip back over an index folder, WITHOUT loading a CLIP model.

Runs inside the clip-retrieval venv. clip back's own entry point (`clip_back()`) always loads a
CLIP model, which would need weights from a model hub; the benchmark only sends embedding_input
queries, so this script assembles the very same Flask app from clip back's own classes (KnnService,
MetadataService, IndicesList, ArrowMetadataProvider, load_index) with the model fields left empty.
Usage: python clip_back_run.py INDEX_FOLDER INDICE_NAME PORT
"""

import sys

from flask import Flask
from flask_cors import CORS
from flask_restful import Api
from prometheus_client import make_wsgi_app
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from clip_retrieval.clip_back import ArrowMetadataProvider, ClipResource, IndicesList, KnnService, MetadataService, load_index

folder, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource = ClipResource(
    device="cpu",
    model=None,
    preprocess=None,
    tokenizer=None,
    model_txt_mclip=None,
    safety_model=None,
    violence_detector=None,
    metadata_provider=ArrowMetadataProvider(folder + "/metadata"),
    image_index=load_index(folder + "/image.index", enable_faiss_memory_mapping=False),
    text_index=load_index(folder + "/text.index", enable_faiss_memory_mapping=False),
    ivf_old_to_new_mapping=None,
    columns_to_return=["url", "caption", "uid", "punsafe", "pwatermark", "similarity"],
    metadata_is_ordered_by_ivf=False,
    aesthetic_embeddings=None,
)
resources = {name: resource}
app = Flask(__name__)
app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": make_wsgi_app()})
api = Api(app)
api.add_resource(IndicesList, "/indices-list", resource_class_kwargs={"indices": [name]})
api.add_resource(MetadataService, "/metadata", resource_class_kwargs={"clip_resources": resources})
api.add_resource(KnnService, "/knn-service", resource_class_kwargs={"clip_resources": resources})
CORS(app)
app.run(host="127.0.0.1", port=port, debug=False)  # exactly how clip_back() serves
