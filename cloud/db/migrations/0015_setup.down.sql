DROP TABLE farm_device_network;
