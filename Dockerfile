# One image for every tier of fanout: the command picks the tier (deploy/docker/entrypoint.sh).
#
#   docker run IMAGE front                       the front API (the default command)
#   docker run IMAGE edge                        nginx, buffering for the front: run it in
#                                                the front's network namespace
#   docker run -e FANOUT_POOL=small IMAGE pool   the worker tier of one pool
#   docker run IMAGE serve                       every tier in one container (a demo)
#
# CPU image: pass TORCH_INDEX_URL, PyTorch's CPU wheel index (its install selector shows
# it), so that torch comes without the CUDA libraries. CUDA image: leave it empty; the
# default torch wheels of Linux bundle the CUDA runtime, and the host needs the NVIDIA
# driver and container toolkit. See docs/DEPLOY.md.
FROM python:3.11-slim

ARG TORCH="torch==2.13.0"
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    FANOUT_LAYOUT=/app/gpu_layout.yaml \
    HF_HUB_OFFLINE=1

# A fixed uid, so that Kubernetes' runAsNonRoot can check it and mounted files can be
# made readable to it. /models: where checkpoints of your own are mounted;
# /var/cache/fanout: where a writable cache for their conversions goes, owned by uid 10001
# so that a new Docker volume mounted there is too (docs/DEPLOY.md, Converted models).
RUN groupadd --gid 10001 fanout \
    && useradd --uid 10001 --gid fanout --create-home --shell /usr/sbin/nologin fanout \
    && mkdir /models /var/cache/fanout \
    && chown fanout:fanout /var/cache/fanout

# nginx for the edge (python -m fanout edge): the binary only. The edge writes the whole
# configuration and puts its pid and temporary files in a run dir under /tmp, so uid 10001
# runs it on a read-only root filesystem (with /tmp writable: a tmpfs or an emptyDir).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && nginx -v

# torch first and alone: the largest layer, rebuilt only when TORCH or its index change.
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH" \
    && python -c "import torch; print('torch', torch.__version__)"

# The project's requirements from setup.cfg alone (no source yet), so that a code change
# reuses this layer. torch is already there and satisfies setup.cfg's torch line.
WORKDIR /app
COPY setup.cfg /app/setup.cfg
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
print('\n'.join(line.strip() for line in c['options']['install_requires'].splitlines() \
if line.strip()))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The shipped models (~70 MB) change less often than the code. Other checkpoints: mount
# them read-only under /models and name that folder in the layout (docs/DEPLOY.md).
COPY models/small /app/models/small
COPY models/medium /app/models/medium
COPY deploy/docker/entrypoint.sh /usr/local/bin/fanout-tier
COPY deploy/docker/healthcheck.py /usr/local/bin/fanout-healthcheck

# The source last. It runs from /app (PYTHONPATH), so the default layout and the models
# it names resolve next to it. The fanout package first (its core, its launcher and the
# `python -m fanout` command; .dockerignore leaves its tools out): the converter below
# needs it.
COPY gpu_layout.yaml /app/gpu_layout.yaml
COPY fanout /app/fanout

# The CTranslate2 conversions of the shipped models, made here so that a pool never
# converts at start-up: for the image's layout and compose's (int8 on CPU), and for
# compose's GPU layout (int8_float16), whose pools the Kubernetes ConfigMap repeats
# (tests/deploy checks that every deployment layout finds its conversions here).
# Converting needs no GPU. The cache lies outside /app and every mount point (/models,
# /etc/fanout, /tmp); root writes it, uid 10001 reads it on a read-only root filesystem.
# Models mounted at run time are not here: see docs/DEPLOY.md, Converted models.
ENV FANOUT_CACHE_DIR=/opt/fanout/cache
COPY deploy/docker/gpu_layout.yaml /app/deploy/docker/gpu_layout.yaml
COPY deploy/docker/gpu_layout.cuda.yaml /app/deploy/docker/gpu_layout.cuda.yaml
RUN python -m fanout convert --layout /app/gpu_layout.yaml \
    && python -m fanout convert --layout /app/deploy/docker/gpu_layout.yaml \
    && python -m fanout convert --layout /app/deploy/docker/gpu_layout.cuda.yaml \
    && rm -f "$FANOUT_CACHE_DIR"/ctranslate2/*.lock \
    && chmod -R a+rX "$FANOUT_CACHE_DIR"

# The tiers' packages, which the converter does not use (changing them keeps the
# conversions' layer); compiled now because the root filesystem may be read-only. The
# build fails unless this nginx accepts what this `fanout edge` writes (nginx -t).
COPY frontend_api /app/frontend_api
COPY worker_api /app/worker_api
RUN chmod 0755 /usr/local/bin/fanout-tier /usr/local/bin/fanout-healthcheck \
    && python -m compileall -q /app/fanout /app/frontend_api /app/worker_api \
    && python -m fanout check /app/gpu_layout.yaml \
    && mkdir /tmp/edge-check \
    && python -m fanout edge --print --run-dir /tmp/edge-check > /tmp/edge-check/nginx.conf \
    && nginx -t -q -e stderr -c /tmp/edge-check/nginx.conf \
    && rm -rf /tmp/edge-check

USER 10001:10001

# The public port (the edge's, front.bind), then the pools of the default layout; a layout
# may use other ports. The front itself listens on loopback (edge.front_bind): not exposed.
EXPOSE 8000 8101 8102
# GET /health of this container's tier: a pool's ($FANOUT_POOL), else the tier that PID 1
# runs (front, edge or serve), at its address in the layout; or 127.0.0.1:$FANOUT_HEALTH_PORT.
# A worker answers 200 once its model is loaded, hence the start period.
HEALTHCHECK --interval=15s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/usr/local/bin/fanout-healthcheck"]

ENTRYPOINT ["fanout-tier"]
CMD ["front"]
