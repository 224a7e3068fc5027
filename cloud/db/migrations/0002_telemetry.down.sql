DROP TABLE sensor_latest, sensor_data;
