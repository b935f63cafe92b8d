"""Generates a realistic SQLite database of about a given size (see bench/README.md).

Three tables in the shape of a small web application -- users, orders, events -- with text of
varied entropy (names and words from small vocabularies, emails, JSON payloads, random hex
tokens, IP addresses), integers and reals, and seven secondary indexes that are updated while
rows are inserted (so the index b-trees look like a live database's, not freshly built ones).
Rows are produced in SQL (recursive CTEs, random()), in batches, until the file reaches the
target size. Compresses about 2-4x with gzip -6.

Standalone: python3 bench/gendb.py OUT.db 64M
"""

import json
import os
import sqlite3
import sys
import time

# Bump when the schema or the data mix changes: cached databases carry it in their name.
GENERATOR_VERSION = 1

FIRST = """James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara
Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew
Betty Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua
Michelle Kenneth Carol Kevin Amanda Brian Dorothy George Melissa Timothy Deborah Ahmed Yuki Olga
Chen Priya Lucas Sofia Mateo Ingrid Kwame Aiko Dmitri Fatima Lars Ana""".split()
LAST = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez
Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris
Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores
Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Kowalski Tanaka Müller
Rossi Dubois Novak Silva Ivanova Okafor Larsen Haddad""".split()
DOMAINS = """gmail.com yahoo.com outlook.com hotmail.com icloud.com proton.me example.org
fastmail.com gmx.de web.de orange.fr mail.ru qq.com company.io acme.co""".split()
COUNTRIES = "US GB DE FR ES IT NL PL SE NO JP CN IN BR MX CA AU NG EG ZA KR TR".split()
CITIES = """Springfield Riverside Franklin Greenville Bristol Clinton Fairview Salem Madison
Georgetown Arlington Ashland Dover Oxford Jackson Burlington Manchester Milton Newport Auburn
Lyon Kraków Osaka Pune Recife Leeds Utrecht Bergen Monterrey Lagos""".split()
WORDS = """the of and to in is you that it he was for on are as with his they at be this have from
or one had by word but not what all were we when your can said there use an each which she do how
their if will up other about out many then them these so some her would make like him into time
has look two more write go see number no way could people my than first water been call who oil
its now find long down day did get come made may part order shipped delayed refund invoice cart
checkout payment card declined approved pending review account password reset login session
error timeout retry success failure premium basic trial upgrade downgrade coupon discount gift
shipping address billing warehouse parcel tracking delivered returned exchange support ticket
urgent please thanks customer product quantity price total subtotal tax fee service""".split()
STATUS = ["paid"] * 6 + ["shipped"] * 8 + ["delivered"] * 12 + ["pending"] * 2 + [
    "cancelled", "refunded"]
CURRENCY = ["USD"] * 6 + ["EUR"] * 3 + ["GBP", "JPY", "BRL", "INR"]
KINDS = ["page_view"] * 10 + ["click"] * 6 + ["search"] * 3 + [
    "add_to_cart", "add_to_cart", "checkout", "login", "logout", "error", "api_call", "api_call"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36",
    "okhttp/4.12.0", "python-requests/2.31.0", "curl/8.5.0",
]

SCHEMA = """
CREATE TABLE users (
  id INTEGER PRIMARY KEY,
  first_name TEXT NOT NULL, last_name TEXT NOT NULL, email TEXT NOT NULL,
  country TEXT, city TEXT, created_at INTEGER NOT NULL, last_login REAL,
  balance_cents INTEGER, api_key TEXT, bio TEXT, settings TEXT);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL REFERENCES users(id), created_at INTEGER NOT NULL,
  status TEXT NOT NULL, currency TEXT NOT NULL, amount_cents INTEGER NOT NULL, tax_rate REAL,
  shipping_address TEXT, items TEXT, note TEXT);
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  user_id INTEGER, ts REAL NOT NULL, kind TEXT NOT NULL, session_id TEXT, ip TEXT,
  user_agent TEXT, duration_ms INTEGER, payload TEXT);
CREATE UNIQUE INDEX users_email ON users(email);
CREATE INDEX users_name ON users(last_name, first_name);
CREATE INDEX orders_user ON orders(user_id, created_at);
CREATE INDEX orders_status ON orders(status, created_at);
CREATE INDEX events_user_ts ON events(user_id, ts);
CREATE INDEX events_kind_ts ON events(kind, ts);
CREATE INDEX events_session ON events(session_id);
"""


def _pick(name):
    """SQL expression: a random element of the JSON array bound as :name."""
    return f"json_extract(:{name}, '$[' || (abs(random()) % json_array_length(:{name})) || ']')"


def _words(n):
    return " || ' ' || ".join([_pick("words")] * n)


# One batch: :n users; 4 orders and 12 events per user, spread over all users so far.
USERS_SQL = f"""
WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < :n),
p AS MATERIALIZED (SELECT k, {_pick('first')} AS f, {_pick('last')} AS l FROM s)
INSERT INTO users (id, first_name, last_name, email, country, city, created_at, last_login,
                   balance_cents, api_key, bio, settings)
SELECT :base + k, f, l,
  lower(f) || '.' || lower(l) || (:base + k) || '@' || {_pick('domains')},
  {_pick('countries')}, {_pick('cities')},
  1500000000 + (:base + k) * 37 + abs(random()) % 1000,
  1700000000 + (abs(random()) % 30000000) / 1.0e0 + (abs(random()) % 1000) / 1000.0,
  abs(random()) % 5000000 - 100000,
  'sk_live_' || lower(hex(randomblob(16))),
  CASE WHEN abs(random()) % 3 = 0 THEN NULL ELSE
    substr({_words(12)}, 1, 20 + abs(random()) % 100) END,
  json_object('theme', CASE abs(random()) % 3 WHEN 0 THEN 'dark' WHEN 1 THEN 'light' ELSE 'auto' END,
              'newsletter', json(CASE WHEN random() > 0 THEN 'true' ELSE 'false' END),
              'lang', lower({_pick('countries')}), 'tz_offset', abs(random()) % 24 - 12)
FROM p
"""

ORDERS_SQL = f"""
WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < :n * 4)
INSERT INTO orders (user_id, created_at, status, currency, amount_cents, tax_rate,
                    shipping_address, items, note)
SELECT 1 + abs(random()) % (:base + :n),
  1600000000 + (:base * 4 + k) * 9 + abs(random()) % 100,
  {_pick('status')}, {_pick('currency')}, 100 + abs(random()) % 50000,
  round((abs(random()) % 2500) / 10000.0, 4),
  (1 + abs(random()) % 9999) || ' ' || {_pick('last')} || ' Street, ' || {_pick('cities')}
    || ' ' || printf('%05d', abs(random()) % 100000) || ', ' || {_pick('countries')},
  json_array(
    json_object('sku', 'SKU-' || upper(hex(randomblob(3))), 'qty', 1 + abs(random()) % 4,
                'price_cents', 100 + abs(random()) % 20000, 'name', {_words(2)}),
    json_object('sku', 'SKU-' || upper(hex(randomblob(3))), 'qty', 1 + abs(random()) % 4,
                'price_cents', 100 + abs(random()) % 20000, 'name', {_words(3)})),
  CASE WHEN abs(random()) % 4 = 0 THEN {_words(6)} END
FROM s
"""

EVENTS_SQL = f"""
WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < :n * 12)
INSERT INTO events (user_id, ts, kind, session_id, ip, user_agent, duration_ms, payload)
SELECT CASE WHEN abs(random()) % 10 = 0 THEN NULL ELSE 1 + abs(random()) % (:base + :n) END,
  1700000000 + (:base * 12 + k) * 0.25 + (abs(random()) % 1000) / 4000.0,
  {_pick('kinds')},
  lower(hex(randomblob(12))),
  (abs(random()) % 223 + 1) || '.' || (abs(random()) % 256) || '.' || (abs(random()) % 256)
    || '.' || (abs(random()) % 256),
  {_pick('agents')},
  abs(random()) % 3000,
  json_object('path', '/' || {_pick('words')} || '/' || {_pick('words')},
              'ref', CASE WHEN random() > 0 THEN 'https://' || {_pick('domains')} || '/' END,
              'query', CASE WHEN abs(random()) % 3 = 0 THEN {_words(3)} END,
              'status', CASE WHEN abs(random()) % 20 = 0 THEN 500 ELSE 200 END,
              'bytes', abs(random()) % 200000)
FROM s
"""

USERS_PER_BATCH = 5000


def generate(path, target_bytes, log=print):
    """Creates `path` (must not exist) with about `target_bytes` bytes; returns its size."""
    started = time.monotonic()
    tmp = path + ".partial"
    for p in (tmp, tmp + "-journal"):
        if os.path.exists(p):
            os.remove(p)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB keeps index inserts in memory
        conn.executescript(SCHEMA)
        params = {
            "first": json.dumps(FIRST), "last": json.dumps(LAST),
            "domains": json.dumps(DOMAINS), "countries": json.dumps(COUNTRIES),
            "cities": json.dumps(CITIES), "words": json.dumps(WORDS),
            "status": json.dumps(STATUS), "currency": json.dumps(CURRENCY),
            "kinds": json.dumps(KINDS), "agents": json.dumps(AGENTS),
        }
        base = 0
        last_report = started
        while True:
            size = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute(
                "PRAGMA page_size").fetchone()[0]
            if size >= target_bytes:
                break
            # Smaller batches near the end keep the overshoot small.
            n = USERS_PER_BATCH if target_bytes - size > (32 << 20) else 500
            conn.execute("BEGIN")
            for sql in (USERS_SQL, ORDERS_SQL, EVENTS_SQL):
                conn.execute(sql, dict(params, n=n, base=base))
            conn.execute("COMMIT")
            base += n
            now = time.monotonic()
            if now - last_report > 10:
                log(f"  generating: {size / 2**20:.0f} / {target_bytes / 2**20:.0f} MiB "
                    f"({now - started:.0f} s)")
                last_report = now
        conn.execute("ANALYZE")
    finally:
        conn.close()
    os.replace(tmp, path)
    return os.path.getsize(path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: gendb.py OUT.db SIZE (e.g. 64M)")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench import parse_size  # noqa: E402
    out, size = sys.argv[1], parse_size(sys.argv[2])
    if os.path.exists(out):
        sys.exit(f"{out} exists")
    t = time.monotonic()
    n = generate(out, size)
    print(f"{out}: {n} bytes in {time.monotonic() - t:.1f} s")
