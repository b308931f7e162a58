# Airflow image for the e-commerce email remarketing project.
#
# Base: the *slim* official image (core Airflow only, no providers). The Airflow version in this
# tag must equal the apache-airflow pin in requirements.txt and the Python version must be 3.11
# (pyproject.toml: requires-python ">=3.11,<3.12"); tests/test_docker_compose.py checks both.
FROM apache/airflow:slim-3.3.2-python3.11

# mysqlclient (pulled in by apache-airflow-providers-mysql for the shop database) has no wheel for
# Linux and is compiled at pip-install time: it needs a C compiler, pkg-config and the MySQL/MariaDB
# client headers. default-libmysqlclient-dev also brings the runtime library (libmariadb3) that the
# compiled module links against, so the packages stay installed (removing build-essential in a
# later layer would not make the image smaller anyway).
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential \
        pkg-config \
        default-libmysqlclient-dev \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
USER airflow

# Python dependencies, installed as the airflow user as the official image docs require.
# - "apache-airflow==${AIRFLOW_VERSION}" (AIRFLOW_VERSION is set by the base image) stops pip from
#   silently upgrading or downgrading Airflow while resolving the project's requirements.
# - The [celery] extra: docker-compose.yaml runs the CeleryExecutor (Redis broker), and the slim image
#   ships without apache-airflow-providers-celery / celery / redis. The executor is a property of this
#   deployment, not of the DAG code, so it is added here rather than required from requirements.txt
#   (if requirements.txt/constraints.txt pin the celery provider, pip honours those pins).
# - constraints.txt must not contain editable (-e) or local-path entries: pip refuses editable
#   constraints ("pip freeze --exclude-editable" produces a usable file).
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/
RUN pip install --no-cache-dir \
        "apache-airflow[celery]==${AIRFLOW_VERSION}" \
        -r /opt/airflow/requirements.txt \
        -c /opt/airflow/constraints.txt

# The project's importable package (include/remarketing) plus the data it reads relative to itself:
# include/markets.yaml (found at Path(remarketing.__file__).parents[1] / "markets.yaml"),
# include/templates and include/sql.
#
# Choice: an *editable* install from /opt/airflow, not a regular install and not PYTHONPATH.
# - A regular (non-editable) install would copy the package into site-packages, where
#   parents[1] is site-packages itself, so markets.yaml, templates/ and sql/ would not be found.
# - The editable install keeps the code at /opt/airflow/include/remarketing and registers
#   /opt/airflow/include on sys.path through a static .pth file (simple package-dir layout), so
#   markets.yaml resolves to /opt/airflow/include/markets.yaml. Because the .pth points at the
#   directory and not at its contents, docker-compose can bind-mount ./include over it for live
#   editing and the image still works without the mount (e.g. in Kubernetes).
# - Unlike PYTHONPATH it also registers the distribution metadata (importlib.metadata /
#   pip show remarketing work), and needs no environment variable in every deployment.
# --no-deps: all runtime dependencies were installed (and pinned) above.
# include/ must be writable by airflow: setuptools writes remarketing.egg-info next to the package.
WORKDIR /opt/airflow
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
COPY --chown=airflow:0 include/ /opt/airflow/include/
RUN pip install --no-cache-dir --no-deps -e /opt/airflow
