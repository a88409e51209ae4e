"""Numbered schema migrations; ``PRAGMA user_version`` records the last one applied."""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: the core schema
    """
    CREATE TABLE entities (
        key INTEGER PRIMARY KEY,          -- entity key as signed 64-bit (see codec)
        dst TEXT NOT NULL, dstp TEXT NOT NULL, proto TEXT NOT NULL, service TEXT NOT NULL,
        src TEXT NOT NULL, srcp TEXT NOT NULL, url TEXT NOT NULL,
        first_seen INTEGER NOT NULL       -- ns
    );
    CREATE TABLE inbox (                  -- points pushed to netsentry, awaiting a check
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        measurement TEXT NOT NULL,
        key INTEGER NOT NULL,
        value REAL NOT NULL
    );
    CREATE INDEX inbox_time ON inbox(time);
    CREATE TABLE state (
        component TEXT NOT NULL, measurement TEXT NOT NULL,
        fingerprint TEXT NOT NULL, blob BLOB NOT NULL, updated INTEGER NOT NULL,
        PRIMARY KEY (component, measurement)
    );
    CREATE TABLE anomalies (
        id TEXT PRIMARY KEY,
        time INTEGER NOT NULL, measurement TEXT NOT NULL, key INTEGER NOT NULL,
        value REAL NOT NULL, score REAL, threshold REAL, detector TEXT NOT NULL,
        explanation TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open'
            CHECK (status IN ('open', 'confirmed', 'false_positive')),
        check_id INTEGER NOT NULL
    );
    CREATE INDEX anomalies_measurement ON anomalies(measurement, time);
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        anomaly_id TEXT NOT NULL REFERENCES anomalies(id),
        status TEXT NOT NULL, at INTEGER NOT NULL
    );
    CREATE TABLE checkpoints (
        source TEXT PRIMARY KEY, watermark INTEGER NOT NULL, updated INTEGER NOT NULL
    );
    CREATE TABLE checks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started INTEGER NOT NULL, finished INTEGER NOT NULL,
        records INTEGER NOT NULL, anomalies INTEGER NOT NULL,
        watermark_from INTEGER NOT NULL, watermark_to INTEGER NOT NULL,
        report TEXT NOT NULL
    );
    CREATE TABLE settings (
        name TEXT PRIMARY KEY, value TEXT NOT NULL, updated INTEGER NOT NULL
    );
    CREATE TABLE settings_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL, value TEXT NOT NULL, at INTEGER NOT NULL, actor TEXT NOT NULL
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
    CREATE TABLE errors (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL, message TEXT NOT NULL
    );
    """,
    # 2: the outbox of notifications (RIoT events), delivered at least once, in order
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,        -- e.g. 'riot'
        anomaly_id TEXT NOT NULL,
        payload TEXT NOT NULL,            -- the JSON body to send
        created INTEGER NOT NULL,         -- ns
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,    -- ns; not sent before
        last_error TEXT,
        last_status INTEGER,              -- HTTP status of the last failure, NULL: no answer
        delivered INTEGER,                -- ns; NULL while pending
        UNIQUE (destination, anomaly_id)
    );
    CREATE INDEX outbox_due ON outbox(destination, delivered, next_attempt);
    """,
    # 3: the epoch of every pseudonymized entity, so the key holder can reverse it
    """
    CREATE TABLE pseudonym_epochs (
        key INTEGER PRIMARY KEY,          -- entity key (signed 64-bit)
        period TEXT NOT NULL,             -- hour or day
        epoch INTEGER NOT NULL,           -- floor(time / period)
        fingerprint TEXT NOT NULL         -- of the master secret, never the secret
    );
    """,
    # 4: devices whose keys netsentry rotates over MQTT (issue 6): their registered public
    # keys, behaviour profiles (MAC-protected), keys (sealed at rest), every rotation, the
    # per-device thresholds and the detections analysts label.
    """
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,              -- [A-Za-z0-9_.-]{1,64}
        role TEXT NOT NULL CHECK (role IN ('device', 'receiver')),
        public_key BLOB NOT NULL,         -- X25519, 32 bytes, registered out of band
        registered INTEGER NOT NULL       -- ns
    );
    CREATE TABLE device_profiles (
        device TEXT PRIMARY KEY REFERENCES devices(id),
        profile TEXT NOT NULL,            -- JSON
        mac BLOB NOT NULL,                -- HMAC-SHA256 over device and profile
        learned INTEGER NOT NULL          -- ns
    );
    CREATE TABLE device_keys (
        device TEXT NOT NULL REFERENCES devices(id),
        key_id INTEGER NOT NULL,          -- only ever increases per device
        sealed BLOB NOT NULL,             -- AEAD-sealed under the key-encryption key
        created INTEGER NOT NULL,         -- ns
        PRIMARY KEY (device, key_id)
    );
    CREATE TABLE rotations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device TEXT NOT NULL REFERENCES devices(id),
        key_id INTEGER NOT NULL,
        reason TEXT NOT NULL CHECK (reason IN ('anomaly', 'schedule', 'operator')),
        detail TEXT NOT NULL,             -- why, e.g. the detection's explanation
        requested INTEGER NOT NULL,       -- ns
        completed INTEGER,                -- ns; NULL while pending or failed
        latency_ms REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'completed', 'failed')),
        error TEXT
    );
    CREATE INDEX rotations_device ON rotations(device, requested);
    CREATE TABLE device_thresholds (
        device TEXT PRIMARY KEY REFERENCES devices(id),
        thresholds TEXT NOT NULL,         -- JSON: feature -> threshold
        updated INTEGER NOT NULL
    );
    CREATE TABLE device_detections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device TEXT NOT NULL REFERENCES devices(id),
        time INTEGER NOT NULL,            -- ns, end of the window
        scores TEXT NOT NULL,             -- JSON: feature or detector -> score
        flagged INTEGER NOT NULL,         -- 1 if it triggered at the thresholds of the time
        label TEXT CHECK (label IN ('false_positive', 'confirmed', 'missed')),
        labelled INTEGER                  -- ns
    );
    CREATE INDEX device_detections_device ON device_detections(device, time);
    """,
]


def migrate(db: sqlite3.Connection) -> int:
    """Apply every migration not applied yet; return the schema version."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return len(MIGRATIONS)
