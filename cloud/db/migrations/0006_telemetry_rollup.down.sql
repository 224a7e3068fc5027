DROP TRIGGER sensor_data_fold_hourly ON sensor_data;
DROP FUNCTION sensor_hourly_fold();
DROP TABLE sensor_hourly;
