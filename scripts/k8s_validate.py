"""Validates rendered Kubernetes manifests offline against a Kubernetes version's schemas.

Strict: unknown fields fail, and so do unknown apiVersions and kinds, except the custom
resources named in ALLOWED_CRDS (their schemas ship with their operators, not with Kubernetes).
Usage: python3 scripts/k8s_validate.py 1.32 rendered.yaml...
"""

import sys

import kubernetes_validate
import yaml

ALLOWED_CRDS = {
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def main() -> int:
    version, paths = sys.argv[1], sys.argv[2:]
    failures = 0
    checked = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                key = (doc.get("apiVersion"), doc.get("kind"))
                name = f"{path}: {key[1]} {doc.get('metadata', {}).get('name')}"
                if key in ALLOWED_CRDS:
                    print(f"skipped (custom resource, allow-listed): {name}")
                    continue
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    checked += 1
                except kubernetes_validate.SchemaNotFoundError as e:
                    print(f"FAIL {name}: no schema for {key} in Kubernetes {version}: {e}")
                    failures += 1
                except kubernetes_validate.ValidationError as e:
                    print(f"FAIL {name}: {e.message} at {'/'.join(map(str, e.path))}")
                    failures += 1
    print(f"{checked} resources valid for Kubernetes {version}, {failures} invalid")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
