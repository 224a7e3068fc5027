CREATE OR REPLACE FUNCTION rooms_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM edge_config_bump(OLD.farm_id);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.farm_id, NEW.name, NEW.species, NEW.stage, NEW.stage_started,
                             NEW.disabled_rules)
            IS NOT DISTINCT FROM (OLD.farm_id, OLD.name, OLD.species, OLD.stage,
                                  OLD.stage_started, OLD.disabled_rules) THEN
        RETURN NEW;
    END IF;
    NEW.config_version := coalesce(edge_config_bump(NEW.farm_id), NEW.config_version);
    NEW.config_origin := nullif(current_setting('smartfarm.config_origin', true), '');
    RETURN NEW;
END $$;
DROP FUNCTION room_edge(text, text);
ALTER TABLE edges DROP COLUMN backlog, DROP COLUMN software_version, DROP COLUMN status_at;
DROP INDEX rooms_edge_idx;
ALTER TABLE rooms DROP CONSTRAINT rooms_edge_fkey, DROP COLUMN edge_id;
