"""Schema checks kubernetes-validate cannot make (it knows only built-in kinds).

Usage: check_custom.py SAMPLES.yaml RENDERED.yaml...

- every SecurityContextConstraints against securitycontextconstraints-v1.json (strict);
- every CustomResourceDefinition: each version's openAPIV3Schema is a valid JSON schema and
  structural (every property typed, or explicitly preserving unknown fields);
- every object of SAMPLES.yaml against the CRD schema of its apiVersion and kind: valid, or
  rejected when annotated `lockmesh.io/expect: invalid`.
Exits 1 naming the file, document and field of each problem.
"""
import json
import pathlib
import sys

import jsonschema
import yaml

HERE = pathlib.Path(__file__).parent
SCC_SCHEMA = json.loads((HERE / "securitycontextconstraints-v1.json").read_text())


def documents(path):
    with open(path) as f:
        for number, doc in enumerate(yaml.safe_load_all(f), start=1):
            if doc:
                yield number, doc


def where(path, number, doc):
    meta = doc.get("metadata", {})
    return f"{path}, document {number} ({doc.get('kind')} {meta.get('namespace', '-')}/{meta.get('name')})"


def field(error):
    return ".".join(str(p) for p in error.absolute_path) or "."


def structural_problems(schema, at="openAPIV3Schema"):
    """Kubernetes' structural rule, as far as lockmesh's CRDs use it."""
    problems = []
    typed = "type" in schema or schema.get("x-kubernetes-int-or-string")
    if not typed and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{at}: no type")
    for name, sub in schema.get("properties", {}).items():
        problems += structural_problems(sub, f"{at}.properties.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            problems += structural_problems(schema[key], f"{at}.{key}")
    return problems


def main(samples, rendered):
    problems = []
    crd_schemas = {}
    checked = 0
    for path in rendered:
        for number, doc in documents(path):
            here = where(path, number, doc)
            if doc.get("kind") == "SecurityContextConstraints":
                checked += 1
                for error in jsonschema.Draft7Validator(SCC_SCHEMA).iter_errors(doc):
                    problems.append(f"{here}, field {field(error)}: {error.message}")
            elif doc.get("kind") == "CustomResourceDefinition":
                checked += 1
                spec = doc["spec"]
                for version in spec["versions"]:
                    schema = version["schema"]["openAPIV3Schema"]
                    try:
                        jsonschema.Draft4Validator.check_schema(schema)
                    except jsonschema.SchemaError as e:
                        problems.append(f"{here}, version {version['name']}: not a JSON schema: {e.message}")
                    problems += [f"{here}, version {version['name']}: {p}" for p in structural_problems(schema)]
                    api = f"{spec['group']}/{version['name']}"
                    crd_schemas[(api, spec["names"]["kind"])] = schema
    for number, doc in documents(samples):
        checked += 1
        here = where(samples, number, doc)
        schema = crd_schemas.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is None:
            problems.append(f"{here}: no CRD serves {doc.get('apiVersion')} {doc.get('kind')}")
            continue
        errors = list(jsonschema.Draft4Validator(schema).iter_errors(doc))
        expect_invalid = doc["metadata"].get("annotations", {}).get("lockmesh.io/expect") == "invalid"
        if expect_invalid and not errors:
            problems.append(f"{here}: accepted, but the CRD schema should reject it")
        if not expect_invalid:
            problems += [f"{here}, field {field(e)}: {e.message}" for e in errors]
    for problem in problems:
        print(f"ERROR {problem}")
    print(f"{checked} objects checked against JSON schemas, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
