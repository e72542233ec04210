#!/usr/bin/env bash
# sqlite3: generates a database (deterministic pseudo-random rows from a recursive CTE),
# builds indexes, runs joins, aggregates, window functions, sorts, LIKE, JSON and an
# integrity check, then dumps it. Every sqlite3 process is the program under test.
source "$(dirname "$0")/lib.sh"
need sqlite3 sqlite3
DB="$WORK/test.db"
ROWS=$((200000 * RA_SCALE))

run_prog sqlite3 "$DB" <<SQL
PRAGMA journal_mode=WAL;
CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, city TEXT, score REAL);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER, amount INTEGER, note TEXT, meta TEXT);
WITH RECURSIVE r(i, x) AS (
    SELECT 1, 12345
    UNION ALL
    SELECT i + 1, (x * 1103515245 + 12345) % 2147483648 FROM r WHERE i < 20000
)
INSERT INTO customers SELECT i, 'customer-' || printf('%06d', x % 1000000),
    'city-' || (x % 97), (x % 10000) / 100.0 FROM r;
WITH RECURSIVE r(i, x) AS (
    SELECT 1, 777
    UNION ALL
    SELECT i + 1, (x * 1103515245 + 12345) % 2147483648 FROM r WHERE i < $ROWS
)
INSERT INTO orders SELECT i, 1 + x % 20000, x % 100000,
    substr('lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod', 1 + x % 40, 1 + x % 30),
    json_object('k', x % 13, 'tags', json_array(x % 3, x % 5, 'v' || (x % 11)))
FROM r;
CREATE INDEX orders_customer ON orders(customer);
CREATE INDEX orders_amount ON orders(amount);
CREATE INDEX customers_city ON customers(city, score);
ANALYZE;
SQL

run_prog sqlite3 -batch "$DB" <<'SQL'
.headers on
.mode list
SELECT count(*), sum(amount), min(amount), max(amount) FROM orders;
SELECT c.city, count(*) AS n, sum(o.amount) AS total, round(avg(c.score), 4) AS avg_score
  FROM orders o JOIN customers c ON c.id = o.customer
  GROUP BY c.city ORDER BY total DESC, c.city LIMIT 15;
SELECT customer, amount, rank FROM (
    SELECT customer, amount, rank() OVER (PARTITION BY customer ORDER BY amount DESC, id) AS rank
    FROM orders WHERE customer < 40)
  WHERE rank <= 2 ORDER BY customer, rank;
SELECT note, count(*) FROM orders WHERE note LIKE '%sum%' GROUP BY note ORDER BY 2 DESC, 1 LIMIT 10;
SELECT json_extract(meta, '$.k') AS k, count(*), sum(json_array_length(meta, '$.tags'))
  FROM orders GROUP BY k ORDER BY k;
SELECT group_concat(name, ',') FROM (SELECT name FROM customers ORDER BY score DESC, id LIMIT 25);
SELECT city, sum(amount) OVER w FROM (
    SELECT c.city, o.amount FROM orders o JOIN customers c ON c.id = o.customer WHERE o.id % 1000 = 0)
  WINDOW w AS (ORDER BY city ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) LIMIT 20;
SELECT upper(name) || '/' || lower(city) AS s FROM customers ORDER BY s DESC LIMIT 5;
UPDATE orders SET amount = amount + 1 WHERE customer % 7 = 0;
DELETE FROM orders WHERE id % 11 = 0;
VACUUM;
SELECT count(*), sum(amount) FROM orders;
PRAGMA integrity_check;
SQL

run_prog sqlite3 "$DB" .dump | sha256sum | cut -c1-32
