-- A small sample database: a few tables, indexes and a view, about 2 MB.
PRAGMA journal_mode = WAL;
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE, created TEXT);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), total REAL, status TEXT, note TEXT);
CREATE INDEX orders_by_customer ON orders(customer_id);
CREATE INDEX orders_by_status ON orders(status, total);
CREATE VIEW open_orders AS SELECT * FROM orders WHERE status = 'open';
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
INSERT INTO customers SELECT i, 'customer ' || i, 'c' || i || '@example.com', datetime('2024-01-01', '+' || i || ' minutes') FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
INSERT INTO orders SELECT i, 1 + (i * 7919) % 5000, round((i * 37) % 10000 / 100.0, 2),
  CASE i % 3 WHEN 0 THEN 'open' WHEN 1 THEN 'paid' ELSE 'shipped' END, hex(randomblob(16)) FROM n;
