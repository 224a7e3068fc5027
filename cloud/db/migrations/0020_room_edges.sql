-- Several edges per farm: each room is served by one edge (its automation, its devices'
-- credentials, its commands), and each edge reports its health (backlog, software version).
--
-- rooms.edge_id NULL means "not assigned": such a room is served by the farm's only edge while the
-- farm has exactly one, and by no edge once it has several (the set-up page shows it unassigned).
-- Registering a farm's second edge pins the unassigned rooms to the first (cloud/db/edges.py), so
-- adding an edge never takes a room away from the edge running it. Deleting an edge unassigns its
-- rooms. Any change of a room's edge bumps the farm's config version, so both the edge losing the
-- room and the edge gaining it fetch their new slice.

ALTER TABLE rooms ADD COLUMN edge_id text;
-- No ON DELETE action: SET NULL (edge_id) needs PostgreSQL 15 and the design promises 14, so
-- cloud/db/edges.py unassigns an edge's rooms in the transaction that deletes it. (A farm's
-- deletion removes its rooms in the same statement: NO ACTION is checked at its end.)
ALTER TABLE rooms ADD CONSTRAINT rooms_edge_fkey FOREIGN KEY (farm_id, edge_id)
    REFERENCES edges (farm_id, id);
CREATE INDEX rooms_edge_idx ON rooms (farm_id, edge_id);

-- Rooms of farms with exactly one edge belong to it from now on.
UPDATE rooms r SET edge_id = e.id
FROM edges e
WHERE e.farm_id = r.farm_id
  AND (SELECT count(*) FROM edges x WHERE x.farm_id = r.farm_id) = 1;

-- The edge that serves a room assigned to p_edge (NULL: unassigned) in farm p_farm.
CREATE FUNCTION room_edge(p_farm text, p_edge text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_edge, (SELECT min(e.id) FROM edges e WHERE e.farm_id = p_farm
                             HAVING count(*) = 1))
$$;

-- Health an edge reports on its stream (shared.sync.EdgeStatus); NULL until it does.
ALTER TABLE edges
    ADD COLUMN backlog bigint CHECK (backlog >= 0),    -- outbox records not yet stored here
    ADD COLUMN software_version text,
    ADD COLUMN status_at timestamptz;                 -- when backlog/version were reported

-- As in 0004, plus edge_id: moving a room is a config change of the farm.
CREATE OR REPLACE FUNCTION rooms_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM edge_config_bump(OLD.farm_id);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.farm_id, NEW.name, NEW.species, NEW.stage, NEW.stage_started,
                             NEW.disabled_rules, NEW.edge_id)
            IS NOT DISTINCT FROM (OLD.farm_id, OLD.name, OLD.species, OLD.stage,
                                  OLD.stage_started, OLD.disabled_rules, OLD.edge_id) THEN
        RETURN NEW;
    END IF;
    NEW.config_version := coalesce(edge_config_bump(NEW.farm_id), NEW.config_version);
    NEW.config_origin := nullif(current_setting('smartfarm.config_origin', true), '');
    RETURN NEW;
END $$;
