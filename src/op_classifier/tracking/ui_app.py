"""The app `op-classifier ui` serves: MLflow's own server, opening where a model developer works.

MLflow 3.17's UI takes its mode (GenAI or model training) from the page's `workflowType` parameter,
else from the browser's stored choice, else GenAI; the experiment's `mlflow.experimentKind` tag is
not read. So a first visit lands on a GenAI overview with "Traces 0". This app is MLflow's server
app (an `mlflow.app` plugin, the way MLflow's own basic-auth is served) with one addition to its
page: a browser that has never chosen a mode starts in model training, without the Assistant panel
MLflow opens on a first visit, and an experiment of ours opened by its plain URL, for the first time
in that browser, opens on its saved runs view (one row per trained model: val/test accuracy, model, key
params). A user's own choice, once made, is never overridden.
"""

from __future__ import annotations

import flask
import mlflow.server as mlflow_server
from mlflow.server import app as mlflow_app

from op_classifier.tracking.store import SHARED_VIEW_KEY, SHARED_VIEW_PREFIX

MODE_KEY = "mlflow.workflowType_v1"  # the UI's useLocalStorage({key: "mlflow.workflowType", version: 1})
# The UI opens its Assistant panel (a third of the width) on a browser's first page load, and records that it
# did under this key: recorded beforehand, the runs table keeps the width; its button still opens the panel.
ASSISTANT_OPENED_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
RUNS_VIEW_KEY = 'MLflowLocalStorage-1.1-ExperimentPage-["{id}"]-ReactComponentState'  # its saved runs view

FIRST_VISIT = f"""<script>(function () {{
  var storage = window.localStorage;
  if (storage.getItem("{MODE_KEY}") === null) storage.setItem("{MODE_KEY}", JSON.stringify("machine_learning"));
  if (storage.getItem("{ASSISTANT_OPENED_KEY}") === null) storage.setItem("{ASSISTANT_OPENED_KEY}", "true");
  var plain = window.location.hash.match(/^#\\/experiments\\/(\\d+)\\/?(runs\\/?)?$/);
  if (!plain || storage.getItem('{RUNS_VIEW_KEY}'.replace("{{id}}", plain[1])) !== null) return;
  fetch("ajax-api/2.0/mlflow/experiments/get?experiment_id=" + plain[1])
    .then(function (answer) {{ return answer.json(); }})
    .then(function (found) {{
      var tags = (found.experiment && found.experiment.tags) || [];
      var ours = tags.some(function (tag) {{ return tag.key === "{SHARED_VIEW_PREFIX}{SHARED_VIEW_KEY}"; }});
      if (ours && window.location.hash === plain[0])
        window.location.replace("#/experiments/" + plain[1] + "/runs?viewStateShareKey={SHARED_VIEW_KEY}");
    }}, function () {{}});
}})();</script>"""


@mlflow_app.after_request
def _first_visit_defaults(response: flask.Response) -> flask.Response:
    """Add FIRST_VISIT to the UI's own page (index.html, served at /), and to nothing else.

    By its view, not its type: a run's report.html downloaded through /get-artifact is text/html too,
    and came back with the script inside it (issue 35).
    """
    own_page = mlflow_app.view_functions.get(flask.request.endpoint or "") is mlflow_server.serve
    if not own_page or response.status_code != 200 or response.mimetype != "text/html":
        return response
    response.direct_passthrough = False  # a file response: read it to edit it
    page = response.get_data(as_text=True)
    if "<head>" in page and FIRST_VISIT not in page:
        response.set_data(page.replace("<head>", "<head>" + FIRST_VISIT, 1))
    return response


from mlflow.server.fastapi_app import app  # noqa: E402  (MLflow's app, built on the Flask app above)

__all__ = ["app"]
