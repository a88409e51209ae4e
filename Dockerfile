# netsentry service image. Build: docker build -t netsentry .
# (Not built in this project's CI: its machines have no Docker engine.)
FROM python:3.11-slim

RUN useradd --system --create-home --home-dir /var/lib/netsentry netsentry
WORKDIR /opt/netsentry
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER netsentry
ENV NETSENTRY_DB=/var/lib/netsentry/netsentry.sqlite \
    NETSENTRY_HOST=0.0.0.0 \
    NETSENTRY_PORT=8000
VOLUME ["/var/lib/netsentry"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ping').status != 204)"
ENTRYPOINT ["netsentry"]
CMD ["serve"]
