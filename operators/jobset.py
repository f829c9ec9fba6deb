"""JobSetOperator: submit a JobSet (a multi-host TPU slice) and wait until it completes or fails.

The cncf-kubernetes provider has no JobSet operator; this one creates the custom object through the provider's
KubernetesHook, polls `status.conditions` (JobSet sets Completed or Failed), and deletes the JobSet on kill.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import BaseOperator

GROUP, VERSION, PLURAL = "jobset.x-k8s.io", "v1alpha2", "jobsets"
POLL_S = 30.0


class JobSetFailed(RuntimeError):
    pass


class JobSetOperator(BaseOperator):
    def __init__(self, *, manifest: dict, kubernetes_conn_id: str = "kubernetes_default", poll_s: float = POLL_S,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.manifest = manifest
        self.kubernetes_conn_id = kubernetes_conn_id
        self.poll_s = poll_s
        self._hook = None

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.manifest["metadata"]["namespace"]

    def hook(self):
        if self._hook is None:
            from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

            self._hook = KubernetesHook(conn_id=self.kubernetes_conn_id)
        return self._hook

    def execute(self, context) -> list[str]:
        hook = self.hook()
        hook.create_custom_object(GROUP, VERSION, PLURAL, self.manifest, self.namespace)
        self.log.info("submitted JobSet %s/%s", self.namespace, self.name)
        while True:
            state = finished_state(hook.get_custom_object(GROUP, VERSION, PLURAL, self.name, self.namespace))
            if state == "Completed":
                return [f"jobset {self.name}: Completed"]
            if state == "Failed":
                raise JobSetFailed(f"JobSet {self.namespace}/{self.name} failed")
            time.sleep(self.poll_s)

    def on_kill(self) -> None:
        self.hook().delete_custom_object(GROUP, VERSION, PLURAL, self.name, self.namespace,
                                         propagation_policy="Foreground")


def finished_state(jobset: dict) -> str | None:
    for condition in (jobset.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Completed", "Failed") and condition.get("status") == "True":
            return condition["type"]
    return None
