-- \df+, \dt+ and \d+ describe the extension: every public function, procedure, table,
-- view and column of schema tenant_backfill has a COMMENT (sql/comments.sql and the
-- COMMENTs next to the definitions), and no internal (_) function has one.
-- (Quietly, so the file runs alone and after 00_install alike.)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS tenant_backfill;
RESET client_min_messages;
-- Public functions and procedures without a description: none.
SELECT p.oid::regprocedure AS undescribed
  FROM pg_proc p
 WHERE p.pronamespace = 'tenant_backfill'::regnamespace AND p.proname NOT LIKE '\_%'
   AND obj_description(p.oid, 'pg_proc') IS NULL
 ORDER BY 1::text;
-- Tables and views without a description: none.
SELECT c.oid::regclass AS undescribed
  FROM pg_class c
 WHERE c.relnamespace = 'tenant_backfill'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND c.relname NOT LIKE '\_%'
   AND obj_description(c.oid, 'pg_class') IS NULL
 ORDER BY 1::text;
-- Their columns without a description: none.
SELECT c.oid::regclass AS relation, a.attname AS undescribed
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relnamespace = 'tenant_backfill'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND c.relname NOT LIKE '\_%'
   AND col_description(c.oid, a.attnum) IS NULL
 ORDER BY 1::text, a.attnum;
-- What is described, by kind: a new object shows here, or above if it has no COMMENT.
SELECT kind, count(*) AS described
  FROM (SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END AS kind
          FROM pg_proc p
         WHERE p.pronamespace = 'tenant_backfill'::regnamespace AND p.proname NOT LIKE '\_%'
           AND obj_description(p.oid, 'pg_proc') IS NOT NULL
        UNION ALL
        SELECT CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END
          FROM pg_class c
         WHERE c.relnamespace = 'tenant_backfill'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND c.relname NOT LIKE '\_%'
           AND obj_description(c.oid, 'pg_class') IS NOT NULL
        UNION ALL
        SELECT 'column'
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relnamespace = 'tenant_backfill'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND c.relname NOT LIKE '\_%'
           AND col_description(c.oid, a.attnum) IS NOT NULL) described
 GROUP BY kind
 ORDER BY kind;
-- Internal functions (_, in whichever schema of the extension) with a description: none.
SELECT p.oid::regprocedure AS described_internal
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
 WHERE e.extname = 'tenant_backfill' AND p.proname LIKE '\_%'
   AND obj_description(p.oid, 'pg_proc') IS NOT NULL
 ORDER BY 1::text;
